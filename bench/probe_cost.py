"""Probe cost: CPU time of the node-probe with 1,000 real pod cgroups sampled at 1 Hz.

Creates 1,000 pod cgroups (kubelet systemd layout, each with a container cgroup, in every
v1 hierarchy and the v2 tree) under a unique prefix, runs the probe's real loop (sample
every second, report every 5 s into the SQLite buffer) for a while, measures the process
CPU time the kernel charged it (getrusage: user + system, so file reads count), and
removes every cgroup it made, also on failure. Goal: below 3% of one core.

    sudo .venv/bin/python bench/probe_cost.py [--pods 1000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

from kopeck.localcluster.sandbox import cgroup_layout, container_dirname, pod_relpath
from kopeck_probe.config import ProbeConfig
from kopeck_probe.probe import Probe

RESULTS = Path(__file__).resolve().parent / "results" / "probe_cost.json"


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def make_tree(base: Path, prefix: str, pods: int, containers: int) -> list[Path]:
    """mkdir the pod and container cgroups; returns every dir made, parents first."""
    made: list[Path] = []
    qos = ("burstable", "besteffort", "guaranteed")
    uids = [f"{i:08x}-0000-4000-a000-{secrets.token_hex(6)}" for i in range(pods)]
    for hier_root in cgroup_layout(base).values():
        root = hier_root / prefix
        root.mkdir()
        made.append(root)
        for i, uid in enumerate(uids):
            rel = pod_relpath("systemd", qos[i % 3], uid)  # type: ignore[arg-type]
            d = root
            for part in rel.parts:
                d = d / part
                if not d.exists():
                    d.mkdir()
                    made.append(d)
            for c in range(containers):
                cd = d / container_dirname("systemd", f"{i:08x}{c:04x}" + "0" * 52)
                cd.mkdir()
                made.append(cd)
    return made


def remove_tree(made: list[Path]) -> int:
    left = 0
    for d in reversed(made):
        for _ in range(20):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
        else:
            left += 1
    return left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--containers", type=int, default=1, help="container cgroups per pod")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (creates cgroups)", file=sys.stderr)
        return 2
    base = Path("/sys/fs/cgroup")
    prefix = f"kopeck-bench-{os.getpid()}-{secrets.token_hex(3)}"
    made: list[Path] = []
    try:
        t0 = time.monotonic()
        made = make_tree(base, prefix, args.pods, args.containers)
        print(f"made {len(made)} cgroups in {time.monotonic() - t0:.1f}s")
        with tempfile.TemporaryDirectory() as td:
            cfg = ProbeConfig(
                node_name="bench",
                cgroup_base=base,
                prefix=prefix,
                wal_path=Path(td) / "w.db",
                metrics_port=None,
                watch_pods=False,
                sample_interval_s=1.0,
                report_interval_s=5.0,
            )
            probe = Probe(cfg)
            probe.sample()  # first look (stat of every cgroup) kept out of the steady state
            stop = threading.Event()
            open_files: list[int] = []

            def finish() -> None:
                open_files.append(probe.reader.open_files())  # before run() closes them
                stop.set()

            timer = threading.Timer(args.seconds, finish)
            cpu0, wall0, cycles0 = cpu_seconds(), time.monotonic(), probe.metrics.health.cycles
            samp0 = probe.cpu_seconds_sampling
            stat0 = probe.reader.memory_stat_reads
            timer.start()
            probe.run(stop)
            cpu1, wall1 = cpu_seconds(), time.monotonic()
            cycles = probe.metrics.health.cycles - cycles0
            reports = probe.metrics.health.reports_built
            sampling = probe.cpu_seconds_sampling - samp0
            stat_reads = probe.reader.memory_stat_reads - stat0
        cpu, wall = cpu1 - cpu0, wall1 - wall0
        result = {
            "pods": args.pods,
            "containers_per_pod": args.containers,
            "cgroups_read_per_cycle": args.pods * (1 + args.containers),
            "sample_hz": 1.0,
            "report_interval_s": 5.0,
            "seconds": round(wall, 2),
            "cycles": cycles,
            "reports": reports,
            "cpu_seconds": round(cpu, 4),
            "cpu_fraction_of_core": round(cpu / wall, 5),
            "cpu_ms_per_cycle": round(1000 * sampling / max(cycles, 1), 3),
            "cpu_ms_per_cycle_all_in": round(1000 * cpu / max(cycles, 1), 3),
            "memory_stat_reads_per_cycle": round(stat_reads / max(cycles, 1), 1),
            "open_files": open_files[0] if open_files else None,
            "kernel": platform.release(),
            "cgroups": "hybrid v1+v2" if (base / "unified").exists() else "v2",
            "python": platform.python_version(),
            "goal_fraction_of_core": 0.03,
        }
        print(json.dumps(result, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if result["cpu_fraction_of_core"] < 0.03 else 1
    finally:
        left = remove_tree(made)
        if left:
            print(f"warning: {left} cgroups could not be removed under {prefix}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
