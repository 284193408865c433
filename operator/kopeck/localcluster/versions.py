"""Pinned versions of the control plane and where its binaries are cached.

The binaries are built once per version into a cache outside the repository (a Kubernetes
build takes minutes), so every path here is keyed by the version it holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
"""k8s.io/kubernetes release built from the Go module proxy."""

ETCD_VERSION = "v3.6.16"
"""go.etcd.io/etcd/server/v3 release built from the Go module proxy."""

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
"""Built in this order: the apiserver first, as it compiles most of what the others share."""


def cache_root() -> Path:
    """$KOPECK_CACHE, else $XDG_CACHE_HOME/kopeck, else ~/.cache/kopeck."""
    env = os.environ.get("KOPECK_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "kopeck").resolve()


@dataclass(frozen=True)
class Binaries:
    """Paths of the control-plane binaries of one pinned version pair."""

    kube_version: str
    etcd_version: str
    kube_bin: Path
    etcd_bin: Path

    @property
    def etcd(self) -> Path:
        return self.etcd_bin / "etcd"

    @property
    def kube_apiserver(self) -> Path:
        return self.kube_bin / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path:
        return self.kube_bin / "kube-controller-manager"

    @property
    def kube_scheduler(self) -> Path:
        return self.kube_bin / "kube-scheduler"

    @property
    def kubectl(self) -> Path:
        return self.kube_bin / "kubectl"

    def missing(self) -> list[Path]:
        """Binaries not yet built (or not executable)."""
        wanted = [self.etcd, *(self.kube_bin / name for name in KUBE_BINARIES)]
        return [p for p in wanted if not os.access(p, os.X_OK)]


def binaries(
    kube_version: str = KUBERNETES_VERSION,
    etcd_version: str = ETCD_VERSION,
    root: Path | None = None,
) -> Binaries:
    """Where the binaries of these versions live (or will, once built).

    $KOPECK_KUBE_BIN_DIR and $KOPECK_ETCD_BIN_DIR point at prebuilt binaries instead, e.g.
    Debian's etcd-server in /usr/bin when the Go build of etcd is not wanted.
    """
    base = root or cache_root()
    kube_bin = os.environ.get("KOPECK_KUBE_BIN_DIR")
    etcd_bin = os.environ.get("KOPECK_ETCD_BIN_DIR")
    return Binaries(
        kube_version=kube_version,
        etcd_version=etcd_version,
        kube_bin=Path(kube_bin) if kube_bin else base / "kubernetes" / kube_version / "bin",
        etcd_bin=Path(etcd_bin) if etcd_bin else base / "etcd" / etcd_version / "bin",
    )
