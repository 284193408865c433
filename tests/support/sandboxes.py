"""Helpers for tests that run servers inside pod sandboxes (network namespaces)."""

from __future__ import annotations

import subprocess

from kopeck.localcluster.sandbox import PodSandbox
from tests.support.waiting import eventually


def wait_listening(pod: PodSandbox, port: int = 5201, timeout: float = 10) -> None:
    """Until something in the pod's namespace listens on TCP port (e.g. iperf3 -s)."""
    assert pod.netns is not None
    netns = pod.netns

    def listening() -> bool:
        out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}"],
                             capture_output=True, text=True).stdout
        return bool(out.strip())

    eventually(listening, timeout=timeout, what=f"a TCP listener on :{port} in {netns}")
