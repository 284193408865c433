"""The whole product on one machine: control plane, a real node, the operator and the probe.

`kopeck demo` and the end-to-end tests start exactly this, so what the demo shows is what
the tests check. Each part is started as a user would start it (the operator and the probe
as `kopeck` processes with flags) and stopped by the pid recorded when it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from kopeck.api.crdgen import all_crds, render
from kopeck.demo.operator_process import OperatorProcess
from kopeck.localcluster.build import Progress, ensure_binaries
from kopeck.localcluster.cluster import LocalCluster, free_port
from kopeck.localcluster.handle import ClusterHandle
from kopeck.localcluster.kubelet import MiniKubelet, NodeSettings

PROBE_ACCOUNT = "kopeck-node-probe"
SYSTEM_NAMESPACE = "kopeck-system"


def install_crds(handle: ClusterHandle) -> None:
    """Apply the CRDs generated from the models and wait until the apiserver serves them."""
    crds = all_crds().values()
    handle.apply("---\n".join(render(crd) for crd in crds))
    handle.wait_established([crd["metadata"]["name"] for crd in crds])


@dataclass
class StackSettings:
    """What differs between the demo and the tests."""

    # The Node advertises an m5.2xlarge (8 cores, 32 GiB) so that the demo's requests fit;
    # the sandboxes share this machine's real cores, and usage is what the kernel measures.
    node: NodeSettings = field(default_factory=lambda: NodeSettings(
        name="kopeck-demo-node", instance_type="m5.2xlarge", zone="us-east-1a",
        region="us-east-1", cpu_cores=8, memory_bytes=32 * 2**30))
    report_interval_s: float = 2.0
    network: str = "ebpf"
    flows: bool = True
    operator_flags: list[str] = field(default_factory=list)


@dataclass
class Stack:
    """Start with `with Stack(directory) as s:`; everything stops on exit, also on error."""

    directory: Path
    settings: StackSettings = field(default_factory=StackSettings)
    say: Callable[[str], None] = print
    cluster: LocalCluster | None = None
    handle: ClusterHandle | None = None
    kubelet: MiniKubelet | None = None
    operator: OperatorProcess | None = None
    probe: subprocess.Popen[bytes] | None = None
    probe_metrics_port: int = 0
    flows_port: int = 0
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def kube(self) -> ClusterHandle:
        """The cluster handle (kubectl, API client)."""
        if self.handle is None:
            raise RuntimeError("the stack is not started")
        return self.handle

    def start(self, keep: bool = False) -> Stack:
        """Bring every part up in dependency order; on failure stop what already runs."""
        try:
            self._start(keep)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, keep: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ensure_binaries(progress=Progress())
        self.cluster = LocalCluster(self.directory / "cluster", tie_to_parent=not keep,
                                    log=self.say)
        self.cluster.start()
        self._stack.callback(self.cluster.stop)
        self.handle = self.cluster.handle()
        install_crds(self.handle)
        self.say("CRDs installed")

        self.kubelet = MiniKubelet(self.handle.api_client(), settings=self.settings.node,
                                   driver="systemd", delete_node_on_stop=True)
        self.kubelet.start()
        self._stack.callback(self.kubelet.stop)
        self.say(f"node {self.settings.node.name} Ready (pods run in real sandboxes, "
                 f"cgroup prefix {self.kubelet.cgroup_prefix})")

        kubectl = self.handle.kubectl
        if kubectl("get", "namespace", SYSTEM_NAMESPACE, check=False).returncode:
            kubectl("create", "namespace", SYSTEM_NAMESPACE)
        kubectl("create", "serviceaccount", PROBE_ACCOUNT, "-n", SYSTEM_NAMESPACE, check=False)
        self.operator = OperatorProcess(
            kubeconfig=self.handle.kubeconfig, workdir=self.directory / "operator",
            namespace=SYSTEM_NAMESPACE, probe_accounts=f"{SYSTEM_NAMESPACE}:{PROBE_ACCOUNT}",
            webhook_config="kopeck.cost.kopeck.io",
            extra=["--probe-interval", str(self.settings.report_interval_s),
                   "--status-interval", "2",
                   "--webhook-client-ca", str(self.cluster.webhook_client_ca_file),
                   *self.settings.operator_flags],
        )  # fmt: skip
        self.operator.start(timeout=60)
        self._stack.callback(self._stop_operator)
        self.say(f"operator up: ingest {self.operator.ingest_url}, webhook registered, "
                 f"log {self.operator.log_path}")

        token_file = self.directory / "probe.token"
        token = kubectl("create", "token", PROBE_ACCOUNT, "-n", SYSTEM_NAMESPACE,
                        "--duration=24h").stdout.strip()
        token_file.write_text(token)
        token_file.chmod(0o600)
        self.probe_metrics_port = free_port()
        argv = [
            sys.executable, "-m", "kopeck.cli", "probe",
            "--node-name", self.settings.node.name,
            "--prefix", self.kubelet.cgroup_prefix,
            "--report-interval", str(self.settings.report_interval_s),
            "--ingest-url", self.operator.ingest_url,
            "--ca-file", str(self.operator.ca_file),
            "--token-file", str(token_file),
            "--wal", str(self.directory / "probe.db"),
            "--metrics-addr", "127.0.0.1",
            "--metrics-port", str(self.probe_metrics_port),
            "--kubeconfig", str(self.handle.kubeconfig),
            "--network", self.settings.network,
            "--zone", self.settings.node.zone,
            "--region", self.settings.node.region,
        ]  # fmt: skip
        if self.settings.flows:
            self.flows_port = free_port()
            argv += ["--flows-listen", f"127.0.0.1:{self.flows_port}"]
        log = (self.directory / "probe.log").open("ab")
        self.probe = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._stack.callback(self._stop_probe)
        # Ready once it has taken its first look: pods started later are then charged
        # from their first core-second.
        self.wait_for("the node-probe's first sampling cycle", self._probe_sampling,
                      timeout=60, every=0.2)
        self.say(f"node-probe up (pid {self.probe.pid}): reports every "
                 f"{self.settings.report_interval_s:g}s, /metrics on :{self.probe_metrics_port}")

    def _probe_sampling(self) -> bool:
        url = f"http://127.0.0.1:{self.probe_metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return False
        return any(line.startswith("kopeck_probe_cycles_total ") and float(line.split()[1]) >= 1
                   for line in text.splitlines())

    def _stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def _stop_probe(self) -> None:
        if self.probe is not None and self.probe.poll() is None:
            self.probe.send_signal(signal.SIGTERM)
            try:
                self.probe.wait(20)
            except subprocess.TimeoutExpired:
                self.probe.kill()
                self.probe.wait(5)

    def probe_log_tail(self, lines: int = 30) -> str:
        """The end of the probe's log, for error messages."""
        path = self.directory / "probe.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop everything that was started, newest first."""
        self._stack.close()

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60.0,
                 every: float = 1.0) -> float:
        """Poll until check() holds; the seconds it took. Raises with the logs on timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.probe is not None and self.probe.poll() is not None:
                raise RuntimeError(f"the node-probe exited: {self.probe_log_tail()}")
            if check():
                return time.monotonic() - start
            time.sleep(every)
        op_log = self.operator.log_tail() if self.operator else ""
        raise TimeoutError(f"{what}: not within {timeout:.0f}s\n--- probe log\n"
                           f"{self.probe_log_tail()}\n--- operator log\n{op_log}")

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
