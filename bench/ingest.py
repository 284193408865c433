"""Ingest throughput: probe reports of 1,000 pods each that the operator absorbs per second.

1,000 real Pods (20 Deployments x 50 replicas, Pending: no kubelet needed) exist in the
apiserver so that the operator attributes every reported pod to its Deployment through
owner references, prices it with a CostPolicy and checkpoints the Allocations before it
acknowledges each report, exactly as in production. N simulated nodes post concurrently
(each its own (node, bootId, seq) stream, one report in flight per node as the probe
does) for a fixed time; we count acknowledged reports.

    .venv/bin/python bench/ingest.py [--kubeconfig K] [--nodes 8] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support
from tests.support.operator import (
    deployment_manifest,
    kubectl_for,
    percentile,
    pod_usage,
    policy_manifest,
    probe_token,
    report,
    running_operator,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"


def make_pods(kubectl: Any, ns: str, deployments: int, replicas: int) -> list[dict[str, str]]:
    kubectl("apply", "-f", "-", input=policy_manifest(ns, ns, amount=None))
    for d in range(deployments):
        kubectl("apply", "-f", "-", input=deployment_manifest(
            f"svc{d:02d}", ns, replicas=replicas, cpu="100m", memory="128Mi"))
    want = deployments * replicas
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        items = json.loads(kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
        if len(items) >= want:
            return [{"uid": p["metadata"]["uid"], "name": p["metadata"]["name"]}
                    for p in items[:want]]
        time.sleep(2)
    raise RuntimeError(f"only {len(items)} of {want} pods were created")


async def drive(url: str, ca: Path, token: str, ns: str, pods: list[dict[str, str]],
                nodes: int, seconds: float) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    codes: dict[int, int] = {}
    start = dt.datetime.now(dt.UTC)
    usages = [pod_usage(p["uid"], ns, p["name"], cpu_core_seconds=0.05, working_set=64 * 2**20,
                        internet_bytes=4096) for p in pods]
    stop_at = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                     headers=headers) as session:
        async def node(i: int) -> None:
            boot = uuid.uuid4().hex
            seq = 0
            while time.monotonic() < stop_at:
                seq += 1
                body = json.dumps(report(node=f"bench-node-{i}", boot_id=boot, seq=seq,
                                         end=start + dt.timedelta(seconds=5 * seq),
                                         pods=usages)).encode()
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    codes[resp.status] = codes.get(resp.status, 0) + 1
                if resp.status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)

        t_start = time.monotonic()
        await asyncio.gather(*(node(i) for i in range(nodes)))
        elapsed = time.monotonic() - t_start
    acked = len(latencies)
    return {
        "nodes": nodes,
        "pods_per_report": len(pods),
        "seconds": round(elapsed, 2),
        "reports_acked": acked,
        "reports_per_second": round(acked / elapsed, 2),
        "pod_intervals_per_second": round(acked * len(pods) / elapsed, 1),
        "ack_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "ack_p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "codes": {str(k): v for k, v in sorted(codes.items())},
    }


def run(kubeconfig: Path, nodes: int, seconds: float, workdir: Path) -> dict[str, Any]:
    kubectl = kubectl_for(kubeconfig)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    ns = f"bench-ingest-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    try:
        with running_operator(kubectl, kubeconfig, workdir) as op:
            pods = make_pods(kubectl, ns, 20, 50)
            time.sleep(2)  # let the pod watch settle
            token = probe_token(kubectl, op)
            result = asyncio.run(drive(op.ingest_url, op.ca_file, token, ns, pods, nodes,
                                       seconds))
            allocs = json.loads(kubectl("get", "alloc", "-n", ns, "-o", "json").stdout)["items"]
            result["allocations"] = len(allocs)
            result["checkpoint_writes"] = [line for line in op.metrics().splitlines()
                                           if line.startswith("kopeck_reports_total")]
    finally:
        kubectl("delete", "costpolicy", ns, "--ignore-not-found", check=False)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kopeck-bench-ingest-"))
    started = time.time()
    if args.kubeconfig is None:
        from kopeck.localcluster.cluster import LocalCluster

        with LocalCluster(workdir / "cluster", tie_to_parent=True) as cluster:
            data = run(cluster.kubeconfig, args.nodes, args.seconds, workdir / "op")
        where = "local control plane (kopeck.localcluster), same machine"
    else:
        data = run(args.kubeconfig, args.nodes, args.seconds, workdir / "op")
        where = f"kubeconfig {args.kubeconfig}"
    out = {
        "benchmark": "ingest: 1,000-pod probe reports absorbed per second",
        "cluster": where,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "wall_seconds": round(time.time() - started, 1),
        **data,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out.get(k) for k in ("reports_per_second", "ack_p50_ms", "ack_p99_ms")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
