"""`kopeck demo`: the whole product on this machine, with progress on screen.

It starts a real local control plane, installs kopeck's CRDs, applies the example
CostPolicies and prints what a user would look at. Everything it starts, it stops
(unless --keep), by the pids it recorded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from kopeck.api.crdgen import all_crds, render
from kopeck.localcluster.build import Progress, ensure_binaries
from kopeck.localcluster.cluster import LocalCluster
from kopeck.localcluster.handle import ClusterHandle

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


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
        print(f"\n[{self.n}] {title}", flush=True)
        yield
        print(f"    done in {time.monotonic() - start:.1f}s", flush=True)

    def show(self, text: str) -> None:
        """Print command output indented under the current step."""
        for line in text.rstrip().splitlines():
            print(f"    {line}")
        sys.stdout.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `kopeck demo`."""
    parser.add_argument("--dir", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument(
        "--keep", action="store_true", help="leave the cluster running and print how to reach it"
    )


def install_crds(handle: ClusterHandle) -> None:
    """Apply the CRDs generated from the models and wait until the apiserver serves them."""
    manifest = "---\n".join(render(crd) for crd in all_crds().values())
    handle.apply(manifest)
    handle.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/costpolicies.cost.kopeck.io", "crd/allocations.cost.kopeck.io",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when every step worked."""
    screen = Screen()
    with ExitStack() as stack:
        directory: Path = args.dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="kopeck-demo-"))
            if not args.keep
            else tempfile.mkdtemp(prefix="kopeck-demo-")
        )
        with screen.step("control plane binaries (built once from the Go module proxy, cached)"):
            ensure_binaries(progress=Progress())
        with screen.step(f"start etcd + kube-apiserver + controllers on loopback in {directory}"):
            cluster = LocalCluster(directory, tie_to_parent=not args.keep, log=screen.show)
            cluster.start()
            if not args.keep:
                stack.callback(cluster.stop)
            handle = cluster.handle()
            screen.show(f"apiserver {cluster.server}")
        with screen.step("install kopeck's CRDs"):
            install_crds(handle)
            screen.show(handle.kubectl("get", "crd", "-o", "name").stdout)
        with screen.step("apply the example CostPolicies"):
            for path in sorted(EXAMPLES.glob("*.yaml")):
                screen.show(handle.kubectl("apply", "-f", str(path)).stdout)
        with screen.step("kubectl get cpol,alloc -A"):
            screen.show(handle.kubectl("get", "cpol,alloc", "-A").stdout)
        if args.keep:
            print(f"\nThe cluster keeps running. export KUBECONFIG={cluster.kubeconfig}")
            print(f"Stop it with: kopeck cluster down --dir {directory}")
    print(f"\ndemo finished in {time.monotonic() - screen.t0:.0f}s")
    return 0
