"""kopeck.localcluster: a real Kubernetes control plane on loopback, built from Go modules.

``ensure_binaries()`` builds etcd and kube-apiserver / controller-manager / scheduler /
kubectl once per pinned version into ``~/.cache/kopeck`` (or $KOPECK_CACHE);
``LocalCluster(dir).start()`` runs them with generated certificates and writes an admin
kubeconfig; ``.handle()`` gives tests and tools the kubeconfig, kubectl and an API client.
"""

from kopeck.localcluster.build import BuildError, Progress, ensure_binaries
from kopeck.localcluster.cluster import ClusterError, LocalCluster
from kopeck.localcluster.handle import ClusterHandle, KubectlError
from kopeck.localcluster.versions import ETCD_VERSION, KUBERNETES_VERSION, binaries, cache_root

__all__ = [
    "ETCD_VERSION",
    "KUBERNETES_VERSION",
    "BuildError",
    "ClusterError",
    "ClusterHandle",
    "KubectlError",
    "LocalCluster",
    "Progress",
    "binaries",
    "cache_root",
    "ensure_binaries",
]
