"""Build kwok (fake kubelets for Nodes and Pods) from the Go module proxy, once per version.

kwok makes Nodes Ready and Pods Running by patching their status, with no kubelet and no
container, so a bench can stand up a thousand nodes on a laptop. ``sigs.k8s.io/kwok`` has no
replace directives, so a plain ``go install module/cmd@version`` works; the binary lands in
``$KOPECK_CACHE/tools/kwok/<version>/bin/kwok`` next to the control plane. A second caller
waits on the lock and then finds the binary.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from kopeck.localcluster.build import BuildError, Progress, _locked, go_binary
from kopeck.localcluster.versions import cache_root

KWOK_VERSION = "v0.8.0"
"""The newest tag the Go module proxy served (2026-12); its go.mod declares go 1.26.0."""

KWOK_PACKAGE = "sigs.k8s.io/kwok/cmd/kwok"

LONG_RUNNING_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-delete.yaml",
)
"""kwok's own "fast" stages without pod-complete: Nodes Ready with leases, Pods Running
until deleted (Job pods too, so they keep reporting like long jobs)."""


def kwok_path(version: str = KWOK_VERSION) -> Path:
    """Where the kwok binary of this version lives in the cache (built or not)."""
    return cache_root() / "tools" / "kwok" / version / "bin" / "kwok"


def build_kwok(version: str = KWOK_VERSION, progress: Progress | None = None) -> Path:
    """The kwok binary, built with ``go install`` first when it is not in the cache."""
    progress = progress or Progress()
    target = kwok_path(version)
    base = target.parent.parent
    with _locked(base / ".lock"):
        if os.access(target, os.X_OK):
            return target
        gobin = base / ".gobin"
        gobin.mkdir(parents=True, exist_ok=True)
        with progress.phase(f"kwok {version}: go install from the module proxy"):
            _go_install(f"{KWOK_PACKAGE}@{version}", gobin, base / "build.log", progress)
        target.parent.mkdir(parents=True, exist_ok=True)
        (gobin / "kwok").replace(target)
        gobin.rmdir()
    return target


def kwok_stages(
    stages: tuple[str, ...] = LONG_RUNNING_STAGES, version: str = KWOK_VERSION
) -> str:
    """The Stage documents kwok ships (kustomize/stage/...) as one YAML text for --config.

    kwok without stages does nothing ("no stages found"); ``go install`` left the module's
    source in the module cache, so the stages are read from there, matching the binary.
    """
    out = subprocess.run(
        [go_binary(), "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    )
    root = Path(out.stdout.strip()) / f"sigs.k8s.io/kwok@{version}" / "kustomize" / "stage"
    missing = [s for s in stages if not (root / s).is_file()]
    if missing:
        raise BuildError(
            f"kwok {version} stages {', '.join(missing)} not in {root}; remove "
            f"{kwok_path(version).parent.parent} and run again to fetch the module"
        )
    return "\n---\n".join((root / s).read_text().strip() for s in stages) + "\n"


def _go_install(spec: str, gobin: Path, log: Path, progress: Progress) -> None:
    """``go install -v spec`` with its output in a log and a ticker of what it did."""
    env = dict(os.environ, GOBIN=str(gobin), GOTOOLCHAIN="local", CGO_ENABLED="0")
    env.pop("GOFLAGS", None)  # -mod=... is refused with package@version
    argv = [go_binary(), "install", "-v", "-trimpath", "-ldflags", "-s -w", spec]
    lines: list[str] = []
    with log.open("a") as logf:
        logf.write(f"\n$ {' '.join(argv)}\n")
        logf.flush()
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        stdout = proc.stdout

        def reader() -> None:
            for line in stdout:
                logf.write(line)
                lines.append(line.rstrip("\n"))

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        start = time.monotonic()
        while thread.is_alive():
            thread.join(timeout=1.0)
            downloaded = sum(1 for ln in lines if ln.startswith("go: downloading"))
            progress.tick(
                f"go install kwok: {downloaded} modules downloaded, "
                f"{len(lines) - downloaded} packages compiled ({time.monotonic() - start:.0f}s)"
            )
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-25:])
        raise BuildError(f"go install kwok failed (exit {rc}); full log: {log}\n{tail}")
