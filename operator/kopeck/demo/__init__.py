"""`kopeck demo`: the whole product on this machine, with progress on screen.

A real control plane on loopback, this machine as a Node whose pods run in real sandboxes,
the operator and the node-probe as processes, example policies and workloads with known
loads; then the moments a user cares about: Allocations filling with real figures, a
Deployment refused for its budget, a rightsizing warning, an anomaly Event, a report.
Everything it starts is stopped at the end (unless --keep), by pid, and on SIGTERM, SIGHUP
or Ctrl-C at any moment (with or without --keep): a timeout or a closed terminal leaves nothing.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

from kopeck.demo import scenario
from kopeck.demo.stack import Stack, StackSettings


class Screen:
    """Numbered steps with elapsed time, so a long run shows where it is."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.n = 0

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Print a step's title, run it, print how long it took."""
        self.n += 1
        start = time.monotonic()
        print(f"\n[{self.n}] {title}  (t={start - self.t0:.0f}s)", flush=True)
        yield
        print(f"    done in {time.monotonic() - start:.1f}s", flush=True)

    def show(self, text: str) -> None:
        """Print output indented under the current step."""
        for line in text.rstrip().splitlines():
            print(f"    {line}")
        sys.stdout.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `kopeck demo`."""
    parser.add_argument("--dir", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument(
        "--keep", action="store_true", help="leave everything running and say how to reach it"
    )
    parser.add_argument("--network", choices=["ebpf", "veth", "off"], default="ebpf",
                        help="the probe's network reader")


class Stopped(BaseException):
    """A stop signal arrived; a BaseException so no handler on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM / SIGHUP / SIGINT raise `Stopped` in the main thread while the demo runs."""
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(text: str) -> None:
    """Print, unless the terminal is gone (SIGHUP): cleanup must not fail on a closed tty."""
    with suppress(OSError):
        print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when every moment was shown, 128+N when signal N stopped it."""
    screen = Screen()
    directory: Path = args.dir or Path(tempfile.mkdtemp(prefix="kopeck-demo-"))
    stack = Stack(directory, StackSettings(network=args.network), say=screen.show)
    with stop_signals_raise():
        try:
            return _run(args, screen, stack, directory)
        except Stopped as stopped:
            for sig in STOP_SIGNALS:  # a second signal must not cut the cleanup short
                signal.signal(sig, signal.SIG_IGN)
            _say(f"\n{stopped}: stopping everything the demo started")
            stack.stop()
            _say(f"stopped; working folder {directory}")
            return 128 + stopped.signum


def _run(args: argparse.Namespace, screen: Screen, stack: Stack, directory: Path) -> int:
    try:
        with screen.step("start: control plane, node, operator, node-probe"):
            stack.start(keep=args.keep)
        show_moments(stack, screen)
    except (RuntimeError, TimeoutError) as exc:
        print(f"\nkopeck demo failed: {exc}", file=sys.stderr)
        if not args.keep:
            stack.stop()
        return 1
    if args.keep:
        print(f"\nEverything keeps running. export KUBECONFIG={stack.kube.kubeconfig}")
        print("Stop with Ctrl-C (or SIGTERM / SIGHUP) to this process.", flush=True)
        while True:
            time.sleep(3600)
    with screen.step("stop everything"):
        stack.stop()
    print(f"\ndemo finished in {time.monotonic() - screen.t0:.0f}s; working folder {directory}")
    return 0


def show_moments(stack: Stack, screen: Screen) -> None:
    """The scenario, step by step, printing what a user sees."""
    with screen.step("apply the example CostPolicies and the demo's fast policy"):
        for seen in scenario.apply_examples(stack):
            screen.show(seen.stdout or seen.stderr)
    with screen.step("workloads with known loads (stress-ng, iperf3) in payments and shop"):
        scenario.start_workloads(stack)
        scenario.start_network_client(stack)
        screen.show(scenario.kubectl(stack, "get", "pods", "-A", "-o", "wide").stdout)
    with screen.step("wait for Allocations to fill with real figures"):
        took = stack.wait_for("Allocations with non-zero cost",
                              lambda: scenario.costs_flowing(stack), timeout=90, every=2)
        screen.show(f"first real figures after {took:.0f}s")
        screen.show(scenario.kubectl(stack, "get", "alloc", "-A").stdout)
    with screen.step("a load test over the payments budget is refused at admission"):
        seen = scenario.over_budget(stack)
        screen.show(f"$ {seen.command} (checkout-loadtest: 100 replicas x 8 CPU)")
        screen.show(seen.stderr or seen.stdout)
        if seen.returncode == 0:
            raise RuntimeError("the over-budget Deployment was admitted")
    with screen.step("rightsizing: the over-requested frontend gets a proposal and a warning"):
        stack.wait_for("a rightsizing proposal for shop/frontend",
                       lambda: scenario.proposal_ready(stack), timeout=90, every=2)
        seen = scenario.reapply_frontend(stack)
        screen.show(f"$ {seen.command}")
        screen.show((seen.stderr + seen.stdout).strip())
    with screen.step("anomaly: a runaway job makes the shop's spend rate jump"):
        scenario.spike(stack)
        for ev in scenario.wait_anomaly(stack):
            screen.show(f"Event {ev['reason']} on {ev['involvedObject'].get('kind')}/"
                        f"{ev['involvedObject'].get('name')}: {ev.get('message', '')}")
    with screen.step("where the money went"):
        screen.show(scenario.kubectl(stack, "get", "cpol").stdout)
        screen.show(scenario.kubectl(stack, "get", "alloc", "-A").stdout)
        kubeconfig = str(stack.kube.kubeconfig)
        out = _kopeck("report", "--kubeconfig", kubeconfig)
        screen.show("$ kopeck report")
        screen.show(out)
        plots = stack.directory / "report"
        _kopeck("report", "--kubeconfig", kubeconfig, "--plots", str(plots))
        screen.show(f"plots and a self-contained HTML page: {plots}/report.html")
        focus = stack.directory / "focus.csv"
        _kopeck("export", "--kubeconfig", kubeconfig, "--format", "focus", "-o", str(focus))
        screen.show(f"FinOps FOCUS export: {focus}")


def _kopeck(*args: str) -> str:
    """Run a kopeck sub-command as a user would; its output (or its error)."""
    out = subprocess.run([sys.executable, "-m", "kopeck.cli", *args], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"kopeck {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout
