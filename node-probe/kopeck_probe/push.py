"""Deliver reports to the operator: a bounded SQLite write-ahead buffer and an HTTPS pusher.

A report is written to the buffer (SQLite in WAL mode, fsync'd by SQLite) before any
attempt to send it, together with the counters it was computed from; it leaves the buffer
only when the operator acknowledges it. A restart therefore resends what was not
acknowledged and resumes counting from the last report's counters. When the buffer is
full the oldest reports are dropped and the next report carries a Gap saying which.

A report the operator refuses (HTTP 4xx, or an ack with accepted=false) is never deleted
for that: a probe and an operator of different versions may disagree about it for a while.
It stays in the buffer marked refused, is counted and logged, and is offered again after
`retry_refused_s` and after every restart; only the buffer bound can drop it, with a Gap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from kopeck.api.report import REPLAY_HORIZON_REPORTS, Gap, ProbeReport, ReportAck

log = logging.getLogger(__name__)

INGEST_PATH = "/v1/reports"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    gaps TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    resend INTEGER NOT NULL DEFAULT 0,
    refused_at REAL,
    refusal TEXT,
    UNIQUE (boot_id, seq)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending_gaps (
    boot_id TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class PendingReport:
    """A buffered report waiting for the operator's acknowledgement."""

    row_id: int
    boot_id: str
    seq: int
    body: bytes
    created: float


def _runs(seqs: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """Consecutive (boot_id, seq) runs -> (boot_id, first, last)."""
    out: list[tuple[str, int, int]] = []
    for boot, seq in sorted(seqs):
        if out and out[-1][0] == boot and out[-1][2] + 1 == seq:
            out[-1] = (boot, out[-1][1], seq)
        else:
            out.append((boot, seq, seq))
    return out


def _unset_new_fields(report: ProbeReport) -> set[str]:
    """Fields of schema 1 left out while at their defaults, so an operator of the previous
    version (which refuses unknown fields) still takes this probe's ordinary reports."""
    out = set()
    if report.schema_version == 1:
        out.add("schema_version")
    if not report.clock_step_seconds:
        out.add("clock_step_seconds")
    if not report.stalled_seconds:
        out.add("stalled_seconds")
    return out


class ReportBuffer:
    """The bounded write-ahead buffer of unacknowledged reports (thread-safe)."""

    def __init__(
        self,
        path: Path,
        boot_id: str,
        max_reports: int = 10_000,
        retry_refused_s: float = 600.0,
    ) -> None:
        if max_reports < 1:
            raise ValueError("max_reports must be at least 1")
        if max_reports > REPLAY_HORIZON_REPORTS:
            # The operator settles seqs older than this many reports: a longer buffer could
            # resend a report the operator no longer tells apart from a folded one.
            raise ValueError(
                f"wal max reports {max_reports} exceeds the replay horizon "
                f"{REPLAY_HORIZON_REPORTS}; set --wal-max-reports to at most that"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.boot_id = boot_id
        self.max_reports = max_reports
        self.retry_refused_s = retry_refused_s
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(reports)")}
        for name, kind in (("refused_at", "REAL"), ("refusal", "TEXT")):
            if name not in columns:  # a buffer written by a probe before refusals were kept
                self._db.execute(f"ALTER TABLE reports ADD COLUMN {name} {kind}")
        with self._txn():
            # Whatever is here was written by an earlier run: mark it for resending, and
            # offer refused reports again (the operator or this probe may be newer now).
            self._db.execute("UPDATE reports SET resend = 1, refused_at = NULL")
            if self._meta("boot_id") != boot_id:
                self._set_meta("boot_id", boot_id)
                self._set_meta("next_seq", "0")

    def close(self) -> None:
        """Close the database (the WAL is checkpointed by SQLite)."""
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def load_state(self) -> dict[str, Any] | None:
        """The attribution state saved with the last buffered report (None on first run)."""
        with self._lock:
            raw = self._meta("state")
        return None if raw is None else dict(json.loads(raw))

    def append(
        self,
        build: Callable[[int, list[Gap]], ProbeReport],
        state: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> ProbeReport:
        """Number, build and store the next report in one transaction (with the state)."""
        with self._lock, self._txn():
            seq = int(self._meta("next_seq") or 0)
            count = int(self._db.execute("SELECT count(*) FROM reports").fetchone()[0])
            if count >= self.max_reports:
                self._drop_oldest(count - self.max_reports + 1)
            gaps = [
                Gap(from_seq=a, to_seq=b, boot_id=None if boot == self.boot_id else boot)
                for boot, a, b in self._db.execute(
                    "SELECT boot_id, from_seq, to_seq FROM pending_gaps ORDER BY rowid"
                ).fetchall()
            ]
            report = build(seq, gaps)
            self._db.execute(
                "INSERT INTO reports(boot_id, seq, body, gaps, created) VALUES (?, ?, ?, ?, ?)",
                (
                    report.boot_id,
                    report.seq,
                    report.model_dump_json(
                        by_alias=True, exclude_none=True, exclude=_unset_new_fields(report)
                    ),
                    json.dumps([g.model_dump(mode="json") for g in gaps]),
                    time.time() if now is None else now,
                ),
            )
            self._db.execute("DELETE FROM pending_gaps")
            self._set_meta("next_seq", str(seq + 1))
            if state is not None:
                self._set_meta("state", json.dumps(state, separators=(",", ":")))
        return report

    def _drop_oldest(self, n: int) -> None:
        rows = self._db.execute(
            "SELECT id, boot_id, seq, gaps FROM reports ORDER BY id LIMIT ?", (n,)
        ).fetchall()
        self._record_gaps(rows)

    def _record_gaps(self, rows: Sequence[tuple[int, str, int, str]]) -> None:
        dropped: list[tuple[str, int]] = []
        for row_id, boot, seq, gaps_json in rows:
            dropped.append((boot, seq))
            # The gaps a dropped report carried must not be lost with it.
            for g in json.loads(gaps_json):
                self._db.execute(
                    "INSERT INTO pending_gaps VALUES (?, ?, ?)",
                    (g.get("boot_id") or boot, g["from_seq"], g["to_seq"]),
                )
            self._db.execute("DELETE FROM reports WHERE id = ?", (row_id,))
        for boot, a, b in _runs(dropped):
            self._db.execute("INSERT INTO pending_gaps VALUES (?, ?, ?)", (boot, a, b))
        self.dropped += len(rows)

    def pending(self, limit: int = 100, now: float | None = None) -> list[PendingReport]:
        """The oldest unacknowledged reports to send now; those from an earlier run marked as
        resends, refused ones only once `retry_refused_s` has passed since the refusal."""
        retry_before = (time.time() if now is None else now) - self.retry_refused_s
        with self._lock:
            rows = self._db.execute(
                "SELECT id, boot_id, seq, body, resend, created FROM reports "
                "WHERE refused_at IS NULL OR refused_at <= ? ORDER BY id LIMIT ?",
                (retry_before, limit),
            ).fetchall()
        out: list[PendingReport] = []
        for row_id, boot, seq, body, resend, created in rows:
            if resend:
                obj = json.loads(body)
                obj["trigger"] = "resend"
                body = json.dumps(obj, separators=(",", ":"))
            out.append(PendingReport(row_id, boot, seq, body.encode(), created))
        return out

    def ack(self, row_id: int) -> None:
        """The operator has the report: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM reports WHERE id = ?", (row_id,))

    def refuse(self, row_id: int, reason: str, now: float | None = None) -> None:
        """The operator refused the report: keep it, marked, to offer again later."""
        with self._lock:
            self._db.execute(
                "UPDATE reports SET refused_at = ?, refusal = ? WHERE id = ?",
                (time.time() if now is None else now, reason, row_id),
            )

    def refused(self) -> list[tuple[str, int, str]]:
        """(boot_id, seq, reason) of the reports held after a refusal, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT boot_id, seq, refusal FROM reports "
                "WHERE refused_at IS NOT NULL ORDER BY id"
            ).fetchall()
        return [(str(b), int(q), str(r or "")) for b, q, r in rows]

    def reject(self, row_id: int) -> None:
        """Drop a report on purpose and record the gap (never done for a mere refusal)."""
        with self._lock, self._txn():
            rows = self._db.execute(
                "SELECT id, boot_id, seq, gaps FROM reports WHERE id = ?", (row_id,)
            ).fetchall()
            self._record_gaps(rows)

    def count(self) -> int:
        """Reports waiting for acknowledgement."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM reports").fetchone()[0])

    def oldest_created(self) -> float | None:
        """Wall time the oldest waiting report was written (push lag = now minus this)."""
        with self._lock:
            row = self._db.execute("SELECT min(created) FROM reports").fetchone()
        return None if row is None or row[0] is None else float(row[0])


class PushError(Exception):
    """Sending a report failed; retryable says whether to keep it and try again."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def ingest_url(url: str) -> str:
    """The full ingest URL: a bare operator address gets the /v1/reports path."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise ValueError(f"--ingest-url {url!r}: use an https:// URL of the operator's ingest")
    if parts.path in ("", "/"):
        parts = parts._replace(path=INGEST_PATH)
    return urllib.parse.urlunsplit(parts)


class HttpsTransport:
    """POST one report as JSON with the ServiceAccount token as bearer; parse the ReportAck.

    The token file is read for every request because projected tokens rotate. The token
    is never logged.
    """

    def __init__(
        self,
        url: str,
        token_path: Path | None,
        ca_file: Path | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = ingest_url(url)
        self.token_path = token_path
        self.timeout_s = timeout_s
        self._ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    def send(self, body: bytes) -> ReportAck:
        """Send and return the acknowledgement, or raise PushError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token_path is not None:
            try:
                headers["Authorization"] = "Bearer " + self.token_path.read_text().strip()
            except OSError as exc:
                raise PushError(
                    f"cannot read token file {self.token_path}: {exc.strerror}", True
                ) from exc
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            retryable = exc.code in (401, 403, 408, 409, 425, 429) or exc.code >= 500
            raise PushError(f"ingest answered HTTP {exc.code}", retryable) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PushError(f"ingest unreachable: {exc}", True) from exc
        try:
            return ReportAck.model_validate_json(raw)
        except ValidationError as exc:
            raise PushError("ingest answered something that is not a ReportAck", True) from exc


class Transport(Protocol):
    """What the pusher needs of a transport (HttpsTransport, or a fake in tests)."""

    def send(self, body: bytes) -> ReportAck:
        """Send one report body; raise PushError on failure."""
        ...


@dataclass
class PushStats:
    """Counters for /metrics."""

    sent: int = 0
    failures: int = 0
    refused: int = 0
    """Refusals by the operator (4xx or accepted=false); the reports stay in the buffer."""
    duplicates: int = 0


class Pusher:
    """Drains the buffer oldest first; on failure waits with capped exponential backoff."""

    def __init__(
        self,
        buffer: ReportBuffer,
        transport: Transport,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.buffer = buffer
        self.transport = transport
        self.max_backoff_s = max_backoff_s
        self.stats = PushStats()
        self._wake = threading.Event()
        self._backoff = 0.0

    def wake(self) -> None:
        """A new report is buffered: send it now."""
        self._wake.set()

    def drain(self) -> bool:
        """Send what is buffered; False when a retryable failure stopped the drain."""
        while True:
            batch = self.buffer.pending()
            if not batch:
                return True
            for item in batch:
                try:
                    ack = self.transport.send(item.body)
                except PushError as exc:
                    self.stats.failures += 1
                    if exc.retryable:
                        log.warning("push of report seq %d failed: %s", item.seq, exc)
                        return False
                    self._refused(item, str(exc))
                    continue
                if ack.accepted:
                    self.stats.sent += 1
                    self.stats.duplicates += int(ack.duplicate)
                    self.buffer.ack(item.row_id)
                else:
                    self._refused(item, "ingest answered accepted=false")

    def _refused(self, item: PendingReport, reason: str) -> None:
        self.stats.refused += 1
        self.buffer.refuse(item.row_id, reason)
        log.error(
            "ingest refused report %s/%d (%s); kept in the buffer and offered again in %.0f s "
            "(%d refusals so far): check that probe and operator versions match",
            item.boot_id, item.seq, reason, self.buffer.retry_refused_s, self.stats.refused,
        )

    def run(self, stop: threading.Event) -> None:
        """Push until stop is set."""
        while not stop.is_set():
            ok = self.drain()
            if ok:
                self._backoff = 0.0
                timeout = None
            else:
                self._backoff = min(self.max_backoff_s, max(0.5, self._backoff * 2))
                timeout = self._backoff
            self._wake.wait(timeout if timeout is not None else 1.0)
            self._wake.clear()
