"""A TCP proxy a test puts between the operator and the apiserver to cut connections.

TLS passes through untouched (the apiserver's certificate names 127.0.0.1), so the operator
sees what a load balancer's idle cut or an apiserver restart looks like: connections reset
mid-request, and refused while the proxy is down.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType


class TcpProxy:
    """127.0.0.1:<port> -> upstream; cut() ends every live connection, down() refuses new.

    latency_s delays every answer from upstream (a slow apiserver: writes take longer).
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accepting = threading.Event()
        self._accepting.set()
        self._closed = False
        self.cuts = 0
        self.latency_s = 0.0
        self._thread = threading.Thread(target=self._accept_loop, name="tcpproxy", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._accepting.is_set():
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns |= {client, server}
            for a, b, slow in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(a, b, slow), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(65536):
                if slow and self.latency_s:
                    time.sleep(self.latency_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
            src.close()

    def cut(self, graceful: bool = False) -> int:
        """End every open connection, with RST or (graceful) a plain FIN, as a server that
        closes an idle keep-alive connection does; the number cut."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for s in conns:
            if graceful:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            else:
                _reset(s)
        self.cuts += len(conns) // 2
        return len(conns) // 2

    def down(self) -> None:
        """Refuse new connections and cut the open ones (an apiserver that went away)."""
        self._accepting.clear()
        self.cut()

    def up(self) -> None:
        """Accept again."""
        self._accepting.set()

    def close(self) -> None:
        """Stop listening and cut everything."""
        self._closed = True
        self._listener.close()
        self.cut()
        self._thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _reset(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a cut connection looks to its peer."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        s.close()
