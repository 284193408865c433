"""The write-ahead buffer (bounded, gaps, restart resend, saved state) and the HTTPS push.

The operator's ingest is written in parallel by another session, so the HTTPS tests run
against a small receiver started here: real TLS on loopback with a self-signed certificate
made with `cryptography`, a bearer token checked, ReportAck answered.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kopeck.api.report import Gap, ProbeReport, ReportAck
from kopeck_probe.push import HttpsTransport, Pusher, PushError, ReportBuffer, ingest_url

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def make_report(seq: int, gaps: list[Gap], boot: str = "boot-1") -> ProbeReport:
    return ProbeReport(
        node="node-a", boot_id=boot, seq=seq, interval_start=T0, interval_end=T0, gaps=gaps
    )


def append(buf: ReportBuffer, state: dict[str, object] | None = None) -> ProbeReport:
    return buf.append(lambda seq, gaps: make_report(seq, gaps, buf.boot_id), state=state)


def test_sequence_numbers_and_ack(tmp_path: Path) -> None:
    buf = ReportBuffer(tmp_path / "w.db", "boot-1")
    assert [append(buf).seq for _ in range(3)] == [0, 1, 2]
    pending = buf.pending()
    assert [p.seq for p in pending] == [0, 1, 2]
    buf.ack(pending[0].row_id)
    assert buf.count() == 2
    buf.close()


def test_wal_mode(tmp_path: Path) -> None:
    buf = ReportBuffer(tmp_path / "w.db", "b")
    mode = buf._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    buf.close()


def test_overflow_drops_oldest_and_records_gap(tmp_path: Path) -> None:
    buf = ReportBuffer(tmp_path / "w.db", "boot-1", max_reports=3)
    for _ in range(5):
        append(buf)
    # seq 0 dropped when seq 3 was added, seq 1 when seq 4 was: each report carries its gap
    rows = [ProbeReport.model_validate_json(p.body) for p in buf.pending()]
    assert [r.seq for r in rows] == [2, 3, 4]
    assert rows[1].gaps == [Gap(from_seq=0, to_seq=0)]
    assert rows[2].gaps == [Gap(from_seq=1, to_seq=1)]
    assert buf.dropped == 2
    # dropping a report that carried a gap keeps that gap: seq 3 carried [0,0]
    for _ in range(2):
        append(buf)
    rows = [ProbeReport.model_validate_json(p.body) for p in buf.pending()]
    assert [r.seq for r in rows] == [4, 5, 6]
    assert rows[1].gaps == [Gap(from_seq=2, to_seq=2)]
    assert sorted((g.from_seq, g.to_seq) for g in rows[2].gaps) == [(0, 0), (3, 3)]
    buf.close()


def test_restart_resends_unacked_and_continues_seq(tmp_path: Path) -> None:
    buf = ReportBuffer(tmp_path / "w.db", "boot-1")
    for _ in range(3):
        append(buf, state={"cgroups": {"x": {"cpu": 5}}})
    buf.ack(buf.pending()[0].row_id)
    buf.close()
    buf = ReportBuffer(tmp_path / "w.db", "boot-1")
    pending = buf.pending()
    assert [p.seq for p in pending] == [1, 2]
    assert all(json.loads(p.body)["trigger"] == "resend" for p in pending)
    assert buf.load_state() == {"cgroups": {"x": {"cpu": 5}}}
    assert append(buf).seq == 3
    assert json.loads(buf.pending()[-1].body)["trigger"] == "periodic"
    buf.close()


def test_new_boot_restarts_seq_and_keeps_old_reports(tmp_path: Path) -> None:
    buf = ReportBuffer(tmp_path / "w.db", "boot-1", max_reports=2)
    append(buf)
    append(buf)
    buf.close()
    buf = ReportBuffer(tmp_path / "w.db", "boot-2", max_reports=2)
    r = append(buf)
    assert (r.boot_id, r.seq) == ("boot-2", 0)
    assert r.gaps == [Gap(from_seq=0, to_seq=0, boot_id="boot-1")]
    assert [(p.boot_id, p.seq) for p in buf.pending()] == [("boot-1", 1), ("boot-2", 0)]
    buf.close()


def test_failed_build_leaves_no_trace(tmp_path: Path) -> None:
    buf = ReportBuffer(tmp_path / "w.db", "b")

    def bad(seq: int, gaps: list[Gap]) -> ProbeReport:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        buf.append(bad)
    assert buf.count() == 0 and append(buf).seq == 0
    buf.close()


@dataclass
class FakeTransport:
    fail: int = 0
    refuse: set[int] = field(default_factory=set)
    got: list[int] = field(default_factory=list)

    def send(self, body: bytes) -> ReportAck:
        seq = json.loads(body)["seq"]
        if self.fail:
            self.fail -= 1
            raise PushError("down", retryable=True)
        if seq in self.refuse:
            raise PushError("HTTP 400", retryable=False)
        self.got.append(seq)
        return ReportAck(accepted=True)


def test_pusher_retries_in_order_and_keeps_refused(tmp_path: Path) -> None:
    buf = ReportBuffer(tmp_path / "w.db", "b")
    for _ in range(4):
        append(buf)
    tr = FakeTransport(fail=1, refuse={2})
    pusher = Pusher(buf, tr)
    assert pusher.drain() is False and buf.count() == 4
    assert pusher.drain() is True
    # a refused report (HTTP 400) is kept, counted and surfaced, not turned into a gap
    assert tr.got == [0, 1, 3] and buf.count() == 1
    assert pusher.stats.failures == 2 and pusher.stats.refused == 1
    assert buf.dropped == 0
    assert buf.refused() == [("b", 2, "HTTP 400")]
    assert append(buf).gaps == []
    buf.close()


def test_refused_report_is_offered_again_later_and_after_restart(tmp_path: Path) -> None:
    buf = ReportBuffer(tmp_path / "w.db", "b", retry_refused_s=60)
    for _ in range(3):
        append(buf)
    tr = FakeTransport(refuse={1})
    pusher = Pusher(buf, tr)
    assert pusher.drain() is True
    assert tr.got == [0, 2] and [p.seq for p in buf.pending()] == []
    refused_at = float(buf._db.execute("SELECT refused_at FROM reports").fetchone()[0])
    assert [p.seq for p in buf.pending(now=refused_at + 61)] == [1]
    buf.close()
    # after an upgrade the operator takes it: a restart offers it at once
    buf = ReportBuffer(tmp_path / "w.db", "b", retry_refused_s=60)
    assert [p.seq for p in buf.pending()] == [1] and buf.refused() == []
    tr.refuse.clear()
    assert Pusher(buf, tr).drain() is True
    assert tr.got == [0, 2, 1] and buf.count() == 0
    buf.close()


def test_refused_reports_leave_only_through_the_buffer_bound(tmp_path: Path) -> None:
    buf = ReportBuffer(tmp_path / "w.db", "b", max_reports=2)
    append(buf)
    pusher = Pusher(buf, FakeTransport(refuse={0, 1, 2}))
    assert pusher.drain() is True and buf.count() == 1
    append(buf)
    assert pusher.drain() is True and buf.count() == 2
    append(buf)  # the bound drops refused seq 0, and says so with a gap
    assert buf.dropped == 1 and [s for _, s, _ in buf.refused()] == [1]
    last = ProbeReport.model_validate_json(buf.pending()[-1].body)
    assert last.seq == 2 and last.gaps == [Gap(from_seq=0, to_seq=0)]
    buf.close()


def test_buffer_of_an_older_probe_gains_the_refusal_columns(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(str(tmp_path / "w.db"))
    db.executescript(
        "CREATE TABLE reports (id INTEGER PRIMARY KEY AUTOINCREMENT, boot_id TEXT NOT NULL,"
        " seq INTEGER NOT NULL, body TEXT NOT NULL, gaps TEXT NOT NULL DEFAULT '[]',"
        " created REAL NOT NULL, resend INTEGER NOT NULL DEFAULT 0, UNIQUE (boot_id, seq));"
    )
    db.close()
    buf = ReportBuffer(tmp_path / "w.db", "b")
    append(buf)
    Pusher(buf, FakeTransport(refuse={0})).drain()
    assert buf.refused() == [("b", 0, "HTTP 400")]
    buf.close()


def test_buffer_bound_must_fit_the_replay_horizon(tmp_path: Path) -> None:
    from kopeck.api.report import REPLAY_HORIZON_REPORTS

    with pytest.raises(ValueError, match="replay horizon"):
        ReportBuffer(tmp_path / "w.db", "b", max_reports=REPLAY_HORIZON_REPORTS + 1)


# -- HTTPS against a receiver started in the test ---------------------------------------


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Receiver:
    url: str
    ca: Path
    token: str
    reports: list[ProbeReport] = field(default_factory=list)
    auth_failures: int = 0
    status: int = 200
    seen: set[tuple[str, str, int]] = field(default_factory=set)
    tls_versions: list[str] = field(default_factory=list)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    cert, key = self_signed(tmp_path)
    state = Receiver(url="", ca=cert, token="s3cret-token")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert isinstance(self.connection, ssl.SSLSocket)
            state.tls_versions.append(self.connection.version() or "")
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                state.auth_failures += 1
                self.send_response(401)
                self.end_headers()
                return
            if self.path != "/v1/reports" or state.status != 200:
                self.send_response(404 if self.path != "/v1/reports" else state.status)
                self.end_headers()
                return
            report = ProbeReport.model_validate_json(body)
            dup = report.key in state.seen
            state.seen.add(report.key)
            if not dup:
                state.reports.append(report)
            out = ReportAck(accepted=True, duplicate=dup).model_dump_json(by_alias=True).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    state.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_ingest_url() -> None:
    assert ingest_url("https://op:8443") == "https://op:8443/v1/reports"
    assert ingest_url("https://op:8443/custom") == "https://op:8443/custom"
    with pytest.raises(ValueError, match="https"):
        ingest_url("op:8443")


def test_https_push_with_bearer_token_and_resend_after_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    token = tmp_path / "token"
    token.write_text("wrong\n")
    tr = HttpsTransport(receiver.url, token, ca_file=receiver.ca, timeout_s=5)
    buf = ReportBuffer(tmp_path / "w.db", "boot-1")
    for _ in range(2):
        append(buf)
    pusher = Pusher(buf, tr)
    assert pusher.drain() is False  # 401: kept for later (tokens rotate)
    assert receiver.auth_failures == 1 and buf.count() == 2
    token.write_text(receiver.token + "\n")
    assert pusher.drain() is True
    assert [r.seq for r in receiver.reports] == [0, 1] and buf.count() == 0
    assert receiver.tls_versions[-1] in ("TLSv1.3", "TLSv1.2")

    # the operator is down: reports stay buffered; the probe restarts; they are resent
    receiver.status = 503
    append(buf)
    assert pusher.drain() is False and buf.count() == 1
    buf.close()
    receiver.status = 200
    buf = ReportBuffer(tmp_path / "w.db", "boot-1")
    assert Pusher(buf, tr).drain() is True
    assert [(r.seq, r.trigger) for r in receiver.reports] == [
        (0, "periodic"),
        (1, "periodic"),
        (2, "resend"),
    ]
    buf.close()


def test_https_refuses_untrusted_certificate(tmp_path: Path, receiver: Receiver) -> None:
    tr = HttpsTransport(receiver.url, None, ca_file=None, timeout_s=5)  # system store only
    with pytest.raises(PushError) as err:
        tr.send(make_report(0, []).model_dump_json(by_alias=True).encode())
    assert err.value.retryable
    assert receiver.reports == []


def test_ordinary_reports_still_read_by_the_previous_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util
    import sys

    recorded = Path(__file__).parent / "recorded" / "report_model_0_1_0.py"
    spec = importlib.util.spec_from_file_location("old_report", recorded)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "old_report", old)
    spec.loader.exec_module(old)
    buf = ReportBuffer(tmp_path / "w.db", "b")
    append(buf)
    body = buf.pending()[0].body
    assert "schemaVersion" not in json.loads(body)
    assert old.ProbeReport.model_validate_json(body).seq == 0
    buf.close()


def test_a_buffer_bound_past_the_replay_horizon_is_refused_at_configuration() -> None:
    from pydantic import ValidationError

    from kopeck.api.report import REPLAY_HORIZON_REPORTS
    from kopeck_probe.config import ProbeConfig

    with pytest.raises(ValidationError, match="wal_max_reports"):
        ProbeConfig(node_name="n", wal_max_reports=REPLAY_HORIZON_REPORTS + 1)
