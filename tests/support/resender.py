"""A stand-in for the probe's write-ahead buffer: every report is sent until acknowledged.

The probe deletes a report only on a 200 ack; anything else (an error, a 503, a refused
connection while the operator restarts) is sent again. The fault suite's ground truth is
"every report generated", because the sender never gives up on one.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Resender:
    """Posts reports to url with a bearer token; keeps each until a 200 ack."""

    url: Callable[[], str]
    ca_file: Path
    token: str
    retry_s: float = 0.2
    attempts: int = 0
    acks: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def post_once(self, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        """One attempt: (HTTP status, answer); status 0 when no answer came."""
        with self._lock:
            self.attempts += 1
        data = json.dumps(body).encode()
        req = urllib.request.Request(
            self.url(), data=data, method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )  # fmt: skip
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {"raw": exc.read().decode(errors="replace")}
        except (OSError, ValueError) as exc:
            return 0, {"error": str(exc)}

    def deliver(self, body: dict[str, Any], deadline_s: float = 120.0) -> dict[str, Any]:
        """Send until a 200 ack (the probe's rule); the ack. Raises after deadline_s."""
        end = time.monotonic() + deadline_s
        last: tuple[int, dict[str, Any]] = (0, {})
        while time.monotonic() < end:
            last = self.post_once(body, timeout=max(1.0, min(30.0, end - time.monotonic())))
            if last[0] == 200:
                with self._lock:
                    self.acks.append(last[1])
                return last[1]
            time.sleep(self.retry_s)
        raise TimeoutError(f"report seq {body.get('seq')} not acknowledged in {deadline_s:.0f}s: "
                           f"last answer {last}")
