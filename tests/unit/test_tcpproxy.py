"""The fault suite's TCP proxy does what its cuts say: a peer waiting for an answer sees an
RST (or a FIN) at once, not a connection that silently stops answering."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.support.tcpproxy import TcpProxy


@pytest.fixture
def silent_upstream() -> socket.socket:
    """A loopback server that accepts and never answers (a request in flight)."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                held.append(srv.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    yield srv
    srv.close()
    for c in held:
        c.close()


@pytest.mark.parametrize("graceful", [False, True])
def test_a_cut_reaches_the_waiting_peer(silent_upstream: socket.socket, graceful: bool) -> None:
    with TcpProxy("127.0.0.1", silent_upstream.getsockname()[1]) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        deadline = threading.Event()
        for _ in range(50):  # the proxy has both legs once it counts the connection
            with proxy._lock:
                if len(proxy._conns) == 2:
                    break
            deadline.wait(0.05)
        assert proxy.cut(graceful=graceful) == 1
        client.settimeout(3)
        if graceful:
            assert client.recv(1) == b""  # FIN
        else:
            with pytest.raises(ConnectionResetError):
                client.recv(1)
        client.close()


def test_a_blackholed_connection_stays_open_and_answers_nothing() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def echo() -> None:
        conn = srv.accept()[0]
        accepted.append(conn)
        while data := conn.recv(100):
            conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    with TcpProxy("127.0.0.1", srv.getsockname()[1]) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        assert proxy.blackhole() == 1
        client.sendall(b"ping")
        client.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.recv(4)
        client.close()
    srv.close()
    for c in accepted:
        c.close()
