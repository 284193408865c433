"""The kubelet's HTTPS endpoint, reduced to what `kubectl logs` needs.

`kubectl logs` asks the apiserver, which connects to the Node's kubelet endpoint
(status.daemonEndpoints.kubeletEndpoint on the Node's address) and reads
/containerLogs/<namespace>/<pod>/<container>. Serving that from the mini-kubelet's log
files makes the demo's pods readable the ordinary way. It listens on loopback only, with a
self-signed certificate (the local apiserver is not given a kubelet CA, as with kind).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

LogFiles = Callable[[str, str, str], list[Path]]
"""(namespace, pod, container) -> that container's log files, oldest run first."""
IsRunning = Callable[[str, str, str], bool]


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A serving certificate and key for host, written 0600 into directory."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kopeck-kubelet@{host}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def select_log(files: list[Path], previous: bool) -> Path | None:
    """The current run's file, or the one before it for ?previous=true."""
    index = -2 if previous else -1
    return files[index] if len(files) >= (2 if previous else 1) else None


def tail(data: bytes, lines: int | None, limit_bytes: int | None) -> bytes:
    """Apply tailLines then limitBytes, as the kubelet does."""
    if lines is not None:
        parts = data.splitlines(keepends=True)
        data = b"".join(parts[-lines:]) if lines > 0 else b""
    if limit_bytes is not None:
        data = data[:limit_bytes]
    return data


class LogServer:
    """HTTPS on loopback serving /containerLogs and /healthz from a kubelet's log files."""

    def __init__(
        self, files: LogFiles, running: IsRunning, pki_dir: Path, host: str = "127.0.0.1"
    ) -> None:
        cert, key = self_signed(pki_dir, host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        stopping = threading.Event()
        self._stopping = stopping

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                log.debug("kubelet endpoint: " + format, *args)

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/healthz":
                    self._reply(200, b"ok")
                    return
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._reply(404, b"only /containerLogs/<ns>/<pod>/<container> is served\n")
                    return
                _, ns, pod, ctr = parts
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                try:
                    lines = int(query["tailLines"]) if "tailLines" in query else None
                    limit = int(query["limitBytes"]) if "limitBytes" in query else None
                except ValueError:
                    self._reply(400, b"tailLines and limitBytes must be integers\n")
                    return
                previous = query.get("previous") == "true"
                path = select_log(files(ns, pod, ctr), previous)
                if path is None:
                    what = "previous terminated" if previous else "any"
                    msg = f"container {ctr!r} in pod {ns}/{pod} has no {what} log on this node\n"
                    self._reply(404, msg.encode())
                    return
                data = tail(path.read_bytes(), lines, limit)
                if query.get("follow") != "true" or previous:
                    self._reply(200, data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                offset = path.stat().st_size
                while not stopping.is_set():
                    with path.open("rb") as fh:
                        fh.seek(offset)
                        chunk = fh.read()
                    if chunk:
                        offset += len(chunk)
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    elif not running(ns, pod, ctr):
                        return
                    time.sleep(0.3)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="kubelet-endpoint", daemon=True
        )

    def start(self) -> LogServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
