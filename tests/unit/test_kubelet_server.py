"""The kubelet endpoint that `kubectl logs` reaches: files, tailLines, previous, errors."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kopeck.localcluster.kubelet_server import LogServer, select_log, tail


def test_tail_and_limit_like_the_kubelet() -> None:
    data = b"a\nb\nc\n"
    assert tail(data, 2, None) == b"b\nc\n"
    assert tail(data, 0, None) == b""
    assert tail(data, None, 3) == b"a\nb"
    assert tail(data, 10, None) == data


def test_select_log_current_and_previous() -> None:
    files = [Path("0.log"), Path("1.log")]
    assert select_log(files, previous=False) == Path("1.log")
    assert select_log(files, previous=True) == Path("0.log")
    assert select_log(files[:1], previous=True) is None
    assert select_log([], previous=False) is None


@pytest.fixture
def server(tmp_path: Path) -> LogServer:
    runs = tmp_path / "ns_p" / "main"
    runs.mkdir(parents=True)
    (runs / "0.log").write_bytes(b"first run\n")
    (runs / "1.log").write_bytes(b"one\ntwo\nthree\n")

    def files(ns: str, pod: str, ctr: str) -> list[Path]:
        d = tmp_path / f"{ns}_{pod}" / ctr
        return sorted(d.glob("*.log"), key=lambda p: int(p.stem)) if d.is_dir() else []

    return LogServer(files, lambda *_: False, tmp_path / ".pki").start()


def get(server: LogServer, path: str) -> tuple[int, str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # as the local apiserver, which has no kubelet CA
    url = f"https://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_serves_container_logs_over_tls(server: LogServer) -> None:
    try:
        assert get(server, "/healthz") == (200, "ok")
        assert get(server, "/containerLogs/ns/p/main") == (200, "one\ntwo\nthree\n")
        assert get(server, "/containerLogs/ns/p/main?tailLines=1") == (200, "three\n")
        assert get(server, "/containerLogs/ns/p/main?previous=true") == (200, "first run\n")
        assert get(server, "/containerLogs/ns/p/main?follow=true") == (200, "one\ntwo\nthree\n")
        code, body = get(server, "/containerLogs/ns/p/other")
        assert code == 404 and "'other'" in body
        assert get(server, "/containerLogs/ns/p/main?tailLines=x")[0] == 400
        assert get(server, "/pods")[0] == 404
    finally:
        server.stop()
