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
    blackhole() makes the live connections drop everything from then on without closing
    (a dead load balancer or NAT entry: requests in flight never get an answer).
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._resetting: set[socket.socket] = set()
        """Sockets cut with RST: their pump closes them without a FIN first."""
        self._dropping: set[socket.socket] = set()
        """Sockets whose data goes nowhere (blackhole())."""
        self._lock = threading.Lock()
        self._accepting = threading.Event()
        self._accepting.set()
        self._closed = False
        self.cuts = 0
        self.blackholed = 0
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
                if src in self._dropping:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                reset = src in self._resetting or dst in self._resetting
                self._conns.discard(src)
                self._resetting.discard(src)
                self._dropping.discard(src)
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    # SHUT_RD wakes the other pump's recv without sending anything; a FIN
                    # only where the cut was graceful
                    s.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
            src.close()  # with SO_LINGER 0 (a reset): the peer gets an RST

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
                # close() from this thread would not wake the pump blocked in recv() on it
                # (Linux), so the socket would stay open and the peer wait for an answer
                # that never comes: a black hole, not a reset. Arm the RST, wake the pump
                # with SHUT_RD, and let it close.
                with self._lock:
                    self._resetting.add(s)
                _linger_zero(s)
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RD)
        self.cuts += len(conns) // 2
        return len(conns) // 2

    def blackhole(self) -> int:
        """The live connections stay open and drop everything from now on; the number."""
        with self._lock:
            self._dropping |= self._conns
            n = len(self._conns) // 2
            self._conns.clear()  # a later cut() or close() leaves them hanging
        self.blackholed += n
        return n

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
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() would not
        self._listener.close()
        self.cut()
        self._thread.join(timeout=5)
        with self._lock:
            dropping, self._dropping = list(self._dropping), set()
        for s in dropping:  # the end of the test: free them
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _linger_zero(s: socket.socket) -> None:
    """SO_LINGER 0: the socket's close() sends an RST."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _reset(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a cut connection looks to its peer (for a socket no
    pump reads yet)."""
    _linger_zero(s)
    with contextlib.suppress(OSError):
        s.close()
