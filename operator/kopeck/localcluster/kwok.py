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
from pathlib import Path

from kopeck.localcluster.build import BuildError, Progress, go_binary, go_install, locked
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
    with locked(base / ".lock"):
        if os.access(target, os.X_OK):
            return target
        gobin = base / ".gobin"
        gobin.mkdir(parents=True, exist_ok=True)
        with progress.phase(f"kwok {version}: go install from the module proxy"):
            go_install("kwok", f"{KWOK_PACKAGE}@{version}", gobin, base / "build.log", progress)
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
