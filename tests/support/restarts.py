"""Stop and start one process of the local control plane (etcd, kube-apiserver) in place.

LocalCluster has no public restart, so this uses its own start steps: the process is ended
(SIGTERM, as a rolling restart does), forgotten, and started again on the same ports and
data directory; the call returns once it is healthy again (etcd) or ready (apiserver).
"""

from __future__ import annotations

from kopeck.localcluster.cluster import LocalCluster

_STARTS = {"etcd": "_start_etcd", "kube-apiserver": "_start_apiserver"}


def restart_component(lc: LocalCluster, name: str, timeout: float = 20.0) -> None:
    """Restart etcd or kube-apiserver of lc; raises ClusterError if it does not come back."""
    comp = next(c for c in lc.components if c.name == name)
    lc._stop_one(comp, timeout)
    lc.components.remove(comp)
    getattr(lc, _STARTS[name])()  # spawns, records (state.json) and waits until healthy
