"""One polling helper for every test that waits for something to become true."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float, what: str, every: float = 0.05) -> T:
    """Call check() until it returns something truthy, and return that.

    Raises TimeoutError naming `what` (and the last falsy value) after `timeout` seconds;
    check() runs at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s (last: {got!r})")
        time.sleep(every)
