"""Shared fixtures: one real control plane for the session, a fresh namespace per test.

``cluster`` starts etcd + kube-apiserver + controller-manager + scheduler (built once into
the cache) only when a test asks for it, so unit tests never pay for it. With
KOPECK_TEST_KUBECONFIG naming an existing cluster (kind, for users with Docker) the same
tests run there instead. Either way the CRDs from crds/ are installed and Established.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kopeck.localcluster.build import Progress, ensure_binaries
from kopeck.localcluster.cluster import LocalCluster
from kopeck.localcluster.handle import ClusterHandle

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "crds"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the cluster carries the `cluster` mark (`-m "not cluster"`)."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def install_crds(cluster: ClusterHandle, timeout_s: int = 60) -> None:
    """Apply crds/*.yaml and wait until the apiserver serves them."""
    files = sorted(CRDS.glob("*.yaml"))
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    args = [a for f in files for a in ("-f", str(f))]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", *args)
    cluster.wait_established(names, timeout=timeout_s)


def _kubectl_for_external() -> Path:
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    return ensure_binaries(kube_names=["kubectl"], with_etcd=False).kubectl


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster | None]:
    """The LocalCluster object when the suite started one; None on an external cluster."""
    if os.environ.get("KOPECK_TEST_KUBECONFIG"):
        yield None
        return
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():  # a first build takes minutes: show progress
        ensure_binaries(progress=Progress())
    directory = Path(tempfile.mkdtemp(prefix="kopeck-cluster-"))
    lc = LocalCluster(directory, tie_to_parent=True)
    try:
        lc.start()
        yield lc
    finally:
        lc.stop()
        if os.environ.get("KOPECK_TEST_KEEP"):
            print(f"\nkept cluster directory {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(
    local_cluster: LocalCluster | None, tmp_path_factory: pytest.TempPathFactory
) -> ClusterHandle:
    """A running cluster with kopeck's CRDs installed.

    Interface: ``kubeconfig``, ``server``, ``ca_file``, ``kubectl_path``,
    ``kubectl(*args, input=None, check=True)`` and ``api_client()``.
    """
    external = os.environ.get("KOPECK_TEST_KUBECONFIG")
    if local_cluster is None:
        assert external
        handle = ClusterHandle.from_kubeconfig(
            Path(external), _kubectl_for_external(), ca_dir=tmp_path_factory.mktemp("ca")
        )
    else:
        handle = local_cluster.handle()
    install_crds(handle)
    return handle


@pytest.fixture
def namespace(cluster: ClusterHandle, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test, deleted afterwards.

    Yields only once its default service account exists: pods are refused before that.
    """
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"kt-{stem}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "kopeck.io/test=true")
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {name}: default service account not created in 30s")
        time.sleep(0.2)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
