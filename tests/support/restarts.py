"""Stop and start one process of the local control plane (etcd, kube-apiserver) in place.

LocalCluster has no public restart, so this uses its own start steps: the process is ended
(SIGTERM, as a rolling restart does), forgotten, and started again on the same ports and
data directory; the call returns once it is healthy again (etcd) or ready (apiserver).

Call it from the main thread: with ``tie_to_parent`` (the test session's cluster) a process
gets SIGKILL when the *thread* that started it ends (PR_SET_PDEATHSIG), so a restart from a
short-lived thread leaves the cluster without that process once the thread returns.
"""

from __future__ import annotations

import time

from kopeck.localcluster.cluster import LocalCluster

_STARTS = {"etcd": "_start_etcd", "kube-apiserver": "_start_apiserver"}


def restart_component(lc: LocalCluster, name: str, timeout: float = 20.0) -> tuple[float, float]:
    """Restart etcd or kube-apiserver of lc: (seconds to stop, seconds to be healthy again).
    Raises ClusterError if it does not come back; SIGKILL after `timeout` s of SIGTERM."""
    comp = next(c for c in lc.components if c.name == name)
    t0 = time.monotonic()
    lc._stop_one(comp, timeout)
    lc.components.remove(comp)
    t1 = time.monotonic()
    getattr(lc, _STARTS[name])()  # spawns, records (state.json) and waits until healthy
    return t1 - t0, time.monotonic() - t1
