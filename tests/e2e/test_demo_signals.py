"""`kopeck demo --keep` ended by a signal (a timeout's SIGTERM, a closed terminal's SIGHUP)
stops everything it started: processes, network namespaces, the node's cgroups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.procs import descendants, is_alive

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the demo's node needs root")


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"the demo exited ({proc.returncode}) before {text!r}:\n{log.read_text()}")
        time.sleep(0.5)
    pytest.fail(f"no {text!r} within {timeout:.0f}s:\n{log.read_text()}")


@pytest.mark.parametrize(
    ("signum", "when"),
    [
        (signal.SIGTERM, "first real figures"),  # a timeout in the middle of the scenario
        (signal.SIGHUP, "Everything keeps running"),  # the terminal closes while it is kept
    ],
)
def test_a_signal_stops_everything_the_kept_demo_started(
    signum: signal.Signals, when: str, tmp_path: Path
) -> None:
    netns_before = _netns()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kopeck.cli", "demo", "--keep", "--dir", str(tmp_path / "w")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    try:
        _wait_for_line(log, when, proc, timeout=300)
        started = descendants(proc.pid)
        netns_started = _netns() - netns_before
        text = log.read_text()
        prefix = text.split("cgroup prefix ", 1)[1].split(")", 1)[0]
        assert started, "the demo started no processes?"
        assert netns_started, "the demo's node made no network namespace?"
        proc.send_signal(signum)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:  # a failed check: still let the demo clean up after itself
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert code == 128 + signum, log.read_text()
    left = [p for p in started if is_alive(p)]
    assert not left, f"processes left running: {left}\n{log.read_text()}"
    assert not (_netns() & netns_started), "network namespaces left behind"
    cgroups = [d for d in Path("/sys/fs/cgroup").glob(f"*/{prefix}*")]
    cgroups += list(Path("/sys/fs/cgroup").glob(f"{prefix}*"))
    assert not cgroups, f"cgroups left behind: {cgroups}"
    assert "stopping everything the demo started" in log.read_text()
