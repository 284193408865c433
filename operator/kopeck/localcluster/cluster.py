"""A real control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

No container engine exists on the machines kopeck is tested on, so kind cannot run; the
same binaries a cluster runs are started here as plain processes with generated
certificates. No real kubelet runs either: ``kopeck.localcluster.kubelet`` registers this
machine as a Node and runs the pods bound to it in real sandboxes.

The processes are recorded by pid (with their start time, so a recycled pid is never
signalled) in ``<dir>/state.json``; ``stop`` and ``kopeck cluster down`` end exactly those.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from kopeck.localcluster.certs import (
    SERVING_DNS,
    CertificateAuthority,
    KeyPair,
    service_account_keys,
)
from kopeck.localcluster.handle import ClusterHandle
from kopeck.localcluster.versions import Binaries, binaries

STATE_FILE = "state.json"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "pod-garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "endpointslice-controller",
    "resourcequota-controller",
    "disruption-controller",
)
"""Workloads, garbage collection and namespaces work; no node-lifecycle controller, so a
node registered without a kubelet heartbeat is never tainted nor evicted."""

STOP_ORDER = ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


class ClusterError(RuntimeError):
    """The cluster cannot start or stop; the message says what to do."""


@dataclass
class Component:
    """One recorded process of the cluster."""

    name: str
    pid: int
    start_ticks: int
    log: str

    def alive(self) -> bool:
        """True while this very process (same pid and start time) runs and is no zombie."""
        stat = _proc_stat(self.pid)
        return stat is not None and stat[1] == self.start_ticks and stat[0] != "Z"


@dataclass
class Ports:
    """Loopback ports of the cluster; 0 means pick a free one at start."""

    apiserver: int = 0
    etcd_client: int = 0
    etcd_peer: int = 0
    controller_manager: int = 0
    scheduler: int = 0


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a pid, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP port can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", avoid: Sequence[int] = ()) -> int:
    """A port the kernel reports free now (another process may still take it first)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    raise ClusterError("no free TCP port on loopback")


def _who_listens(port: int) -> str:
    """Best effort: which process holds a port, for the error message."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if out:
            return f" (held by: {out.split()[-1]})"
    return ""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _set_pdeathsig() -> None:
    """Run in the child: get SIGTERM when the parent dies, so a crashed test run leaves no
    control plane behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler in ``directory``.

    ``with LocalCluster(d) as c:`` starts it and stops it; ``start``/``stop`` do the same
    by hand. ``tie_to_parent`` makes the processes die with this Python process (tests);
    ``kopeck cluster up`` leaves it off so the cluster outlives the command.
    """

    directory: Path
    port: int = 0
    bins: Binaries = field(default_factory=binaries)
    bind_address: str = "127.0.0.1"
    controllers: Sequence[str] = CONTROLLERS
    with_controller_manager: bool = True
    with_scheduler: bool = True
    extra_sans: Sequence[str] = ()
    extra_apiserver_args: Sequence[str] = ()
    tie_to_parent: bool = False
    start_timeout: float = 120.0
    log: Callable[[str], None] = lambda _msg: None
    ports: Ports = field(default_factory=Ports)
    components: list[Component] = field(default_factory=list)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()

    # -- paths -----------------------------------------------------------------------------
    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters), certificates embedded."""
        return self.directory / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def webhook_client_ca_file(self) -> Path:
        """The CA of the client certificate the apiserver presents to admission webhooks:
        give it to the operator as --webhook-client-ca."""
        return self.pki / "webhook-client-ca.crt"

    @property
    def admission_config(self) -> Path:
        """The AdmissionConfiguration naming the webhook client kubeconfig."""
        return self.directory / "admission.yaml"

    @property
    def server(self) -> str:
        host = "127.0.0.1" if self.bind_address in ("0.0.0.0", "127.0.0.1") else self.bind_address
        return f"https://{host}:{self.ports.apiserver}"

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    def handle(self) -> ClusterHandle:
        """The interface tests and tools use: kubeconfig, server, CA, kubectl, API client."""
        return ClusterHandle(
            kubeconfig=self.kubeconfig,
            server=self.server,
            ca_file=self.ca_file,
            kubectl_path=self.bins.kubectl,
            kube_cache_dir=self.directory / "kube-cache",
        )

    def env(self) -> dict[str, str]:
        """KUBECONFIG for this cluster and PATH with its kubectl first."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bins.kube_bin}:{os.environ.get('PATH', '')}",
        }

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start every component, wait until each is healthy, write the kubeconfig."""
        missing = self.bins.missing()
        if missing:
            raise ClusterError(
                "control-plane binaries missing: "
                + ", ".join(str(p) for p in missing)
                + "; build them with `kopeck cluster build`"
            )
        previous = self.attach_state()
        if previous is not None and any(c.alive() for c in previous):
            pids = ", ".join(f"{c.name}={c.pid}" for c in previous if c.alive())
            raise ClusterError(
                f"a cluster is already running in {self.directory} ({pids}); "
                f"stop it with `kopeck cluster down --dir {self.directory}`"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        self._choose_ports()
        t0 = time.monotonic()
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            if self.with_controller_manager:
                self._start_controller_manager()
            if self.with_scheduler:
                self._start_scheduler()
            self._wait_components_healthy()
        except BaseException:
            self.stop()
            raise
        self.log(f"cluster ready in {time.monotonic() - t0:.1f}s at {self.server}")
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """End the recorded processes (SIGTERM, then SIGKILL after ``timeout``)."""
        if not self.components:
            self.components = self.attach_state() or []
        by_name = {c.name: c for c in self.components}
        for name in STOP_ORDER:
            comp = by_name.get(name)
            if comp is None:
                continue
            self._stop_one(comp, timeout)
        self.components = []
        self._procs.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def _stop_one(self, comp: Component, timeout: float) -> None:
        if not comp.alive():
            self._reap(comp.name)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(comp.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap(comp.name)
            if not comp.alive():
                return
            time.sleep(0.1)
        self.log(f"{comp.name} (pid {comp.pid}) ignored SIGTERM for {timeout:.0f}s; killing")
        with contextlib.suppress(ProcessLookupError):
            os.kill(comp.pid, signal.SIGKILL)
        for _ in range(50):
            self._reap(comp.name)
            if not comp.alive():
                return
            time.sleep(0.1)

    def _reap(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None:
            proc.poll()

    def running(self) -> bool:
        """Whether every recorded component still runs."""
        comps = self.components or self.attach_state() or []
        return bool(comps) and all(c.alive() for c in comps)

    def attach_state(self) -> list[Component] | None:
        """Read ports and processes recorded by a previous start in this directory."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        self.ports = Ports(**state["ports"])
        self.bind_address = state.get("bind_address", self.bind_address)
        return [Component(**c) for c in state["components"]]

    def _save_state(self) -> None:
        state: dict[str, Any] = {
            "server": self.server,
            "bind_address": self.bind_address,
            "kubeconfig": str(self.kubeconfig),
            "kube_version": self.bins.kube_version,
            "etcd_version": self.bins.etcd_version,
            "kube_bin": str(self.bins.kube_bin),
            "ports": asdict(self.ports),
            "components": [asdict(c) for c in self.components],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    # -- steps -----------------------------------------------------------------------------
    def _choose_ports(self) -> None:
        host = "127.0.0.1"
        if self.port:
            if not port_is_free(self.port, host):
                raise ClusterError(
                    f"port {self.port} on {host} is already in use{_who_listens(self.port)}; "
                    "choose another with --port, or leave --port out to pick a free one"
                )
            self.ports.apiserver = self.port
        taken: list[int] = [self.ports.apiserver] if self.ports.apiserver else []
        for name in ("apiserver", "etcd_client", "etcd_peer", "controller_manager", "scheduler"):
            if name == "apiserver" and self.port:
                continue
            port = free_port(host, avoid=taken)
            setattr(self.ports, name, port)
            taken.append(port)

    def _write_pki(self) -> None:
        ca = CertificateAuthority.create_or_load(self.pki)
        sans_ip = ["127.0.0.1", SERVICE_IP]
        sans_dns = list(SERVING_DNS)
        for san in (self.bind_address, *self.extra_sans):
            if san in ("0.0.0.0", ""):
                continue
            if _is_ip(san):
                sans_ip.append(san)
            else:
                sans_dns.append(san)
        ca.issue(self.pki, "apiserver", "kube-apiserver", (), sans_dns, sans_ip, server=True)
        admin = ca.issue(self.pki, "admin", "kopeck-admin", ["system:masters"])
        kcm = ca.issue(self.pki, "controller-manager", "system:kube-controller-manager")
        sched = ca.issue(self.pki, "scheduler", "system:kube-scheduler")
        service_account_keys(self.pki)
        # Request-header (front-proxy) CA: the aggregation layer and the delegated
        # authentication of the controller-manager and scheduler read it from the apiserver.
        proxy_ca = CertificateAuthority.create_or_load(
            self.pki, "kopeck-front-proxy-ca", "proxy-ca"
        )
        proxy_ca.issue(self.pki, "proxy-client", "front-proxy-client")
        self._write_webhook_client()
        self._write_kubeconfig(self.kubeconfig, "kopeck-admin", admin, embed=True)
        self._write_kubeconfig(self.directory / "controller-manager.kubeconfig", "kcm", kcm)
        self._write_kubeconfig(self.directory / "scheduler.kubeconfig", "scheduler", sched)

    def _write_webhook_client(self) -> None:
        """The apiserver's identity towards admission webhooks: a client certificate from
        its own CA (webhook-client-ca.crt), named for every webhook ("*") in a kubeconfig
        that the AdmissionConfiguration hands to both webhook admission plugins."""
        ca = CertificateAuthority.create_or_load(
            self.pki, "kopeck-webhook-client-ca", "webhook-client-ca"
        )
        pair = ca.issue(self.pki, "webhook-client", "kube-apiserver-webhook-client")
        kubeconfig = self.directory / "webhook-client.kubeconfig"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "users": [
                {"name": "*", "user": {"client-certificate": str(pair.cert),
                                       "client-key": str(pair.key)}}
            ],
        }
        fd = os.open(kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
        plugin_config = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "WebhookAdmissionConfiguration",
            "kubeConfigFile": str(kubeconfig),
        }
        admission = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AdmissionConfiguration",
            "plugins": [
                {"name": name, "configuration": plugin_config}
                for name in ("ValidatingAdmissionWebhook", "MutatingAdmissionWebhook")
            ],
        }
        self.admission_config.write_text(yaml.safe_dump(admission, sort_keys=False))

    def _write_kubeconfig(self, path: Path, user: str, pair: KeyPair, embed: bool = False) -> None:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        cluster: dict[str, str] = {"server": self.server}
        creds: dict[str, str] = {}
        if embed:
            cluster["certificate-authority-data"] = b64(self.ca_file)
            creds = {"client-certificate-data": b64(pair.cert), "client-key-data": b64(pair.key)}
        else:
            cluster["certificate-authority"] = str(self.ca_file)
            creds = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kopeck-local", "cluster": cluster}],
            "users": [{"name": user, "user": creds}],
            "contexts": [
                {"name": "kopeck-local", "context": {"cluster": "kopeck-local", "user": user}}
            ],
            "current-context": "kopeck-local",
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)

    def user_kubeconfig(
        self, user: str, groups: Sequence[str] = (), path: Path | None = None
    ) -> Path:
        """A kubeconfig for a client-certificate identity (CN=user, O=groups), e.g. to test
        RBAC with a least-privilege user instead of the admin."""
        ca = CertificateAuthority.create_or_load(self.pki)
        users = self.directory / "users"
        users.mkdir(exist_ok=True)
        stem = user.replace(":", "_").replace("/", "_")
        pair = ca.issue(users, stem, user, groups)
        out = path or users / f"{stem}.kubeconfig"
        self._write_kubeconfig(out, user, pair, embed=True)
        return out

    def _spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = self.directory / "logs" / f"{name}.log"
        with log.open("ab") as logf:
            logf.write(f"\n==== {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                preexec_fn=_set_pdeathsig if self.tie_to_parent else None,
            )
        stat = _proc_stat(proc.pid)
        self._procs[name] = proc
        self.components.append(Component(name, proc.pid, stat[1] if stat else 0, str(log)))
        self._save_state()
        self.log(f"started {name} (pid {proc.pid}), log {log}")
        return proc

    def _wait(self, name: str, probe: Callable[[], bool], what: str) -> None:
        """Poll ``probe`` until true; fail at once, with the log's tail, if the process dies."""
        deadline = time.monotonic() + self.start_timeout
        log = self.directory / "logs" / f"{name}.log"
        while time.monotonic() < deadline:
            proc = self._procs[name]
            if proc.poll() is not None:
                raise ClusterError(
                    f"{name} exited with status {proc.returncode} before it was {what}; "
                    f"last lines of {log}:\n{_tail(log)}"
                )
            with contextlib.suppress(OSError, ValueError, ssl.SSLError):
                if probe():
                    return
            time.sleep(0.25)
        raise ClusterError(
            f"{name} was not {what} within {self.start_timeout:.0f}s; "
            f"last lines of {log}:\n{_tail(log)}"
        )

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        argv = [
            str(self.bins.etcd),
            "--name=kopeck",
            f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kopeck={peer}",
            "--log-level=warn",
        ]
        if _etcd_supports_no_fsync(self.bins.etcd):
            argv.append("--unsafe-no-fsync")  # a throw-away test store: speed over durability
        self._spawn("etcd", argv)

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client}/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")

        self._wait("etcd", healthy, "healthy")

    def _apiserver_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _get(self, url: str, ctx: ssl.SSLContext | None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), err.read()

    def _start_apiserver(self) -> None:
        pki = self.pki
        argv = [
            str(self.bins.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            f"--bind-address={self.bind_address}",
            f"--secure-port={self.ports.apiserver}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--requestheader-client-ca-file={pki / 'proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'proxy-client.key'}",
            f"--admission-control-config-file={self.admission_config}",
            *self.extra_apiserver_args,
        ]
        self._spawn("kube-apiserver", argv)
        ctx = self._apiserver_ssl()

        def ready() -> bool:
            return self._get(f"{self.server}/readyz", ctx)[0] == 200

        self._wait("kube-apiserver", ready, "ready (/readyz)")

    def _component_args(self, name: str, kubeconfig: Path, port: int) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={self.bind_address if self.bind_address != '0.0.0.0' else '127.0.0.1'}",
            f"--secure-port={port}",
            f"--cert-dir={self.directory / name}",
            "--leader-elect=false",
        ]

    def _start_controller_manager(self) -> None:
        pki = self.pki
        argv = [
            str(self.bins.kube_controller_manager),
            *self._component_args(
                "kube-controller-manager",
                self.directory / "controller-manager.kubeconfig",
                self.ports.controller_manager,
            ),
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--cluster-name=kopeck-local",
            f"--controllers={','.join(self.controllers)}",
        ]
        self._spawn("kube-controller-manager", argv)

    def _start_scheduler(self) -> None:
        argv = [
            str(self.bins.kube_scheduler),
            *self._component_args(
                "kube-scheduler", self.directory / "scheduler.kubeconfig", self.ports.scheduler
            ),
        ]
        self._spawn("kube-scheduler", argv)

    def _wait_components_healthy(self) -> None:
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # self-signed serving certs of the components
        if self.with_controller_manager:
            url = f"https://127.0.0.1:{self.ports.controller_manager}/healthz"
            self._wait(
                "kube-controller-manager",
                lambda: self._get(url, insecure)[0] == 200,
                "healthy (/healthz)",
            )
            # The serviceaccount controller creating "default" proves controllers act, and
            # pods cannot be created in a namespace before its default service account exists.
            ctx = self._apiserver_ssl()
            sa = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
            self._wait(
                "kube-controller-manager",
                lambda: self._get(sa, ctx)[0] == 200,
                "acting (default service account created)",
            )
        if self.with_scheduler:
            url = f"https://127.0.0.1:{self.ports.scheduler}/healthz"
            self._wait("kube-scheduler", lambda: self._get(url, insecure)[0] == 200, "healthy")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _etcd_supports_no_fsync(etcd: Path) -> bool:
    """--unsafe-no-fsync exists from etcd 3.5; Debian's etcd-server 3.4 lacks it."""
    try:
        out = subprocess.run([str(etcd), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    for line in out.stdout.splitlines():
        if line.startswith("etcd Version:"):
            parts = line.split(":", 1)[1].strip().split(".")
            with contextlib.suppress(ValueError, IndexError):
                return (int(parts[0]), int(parts[1])) >= (3, 5)
    return False


def stop_directory(directory: Path, timeout: float = 20.0) -> list[str]:
    """Stop the cluster recorded in ``directory``; returns what was stopped."""
    cluster = LocalCluster(directory)
    comps = cluster.attach_state()
    if comps is None:
        return []
    cluster.components = comps
    names = [f"{c.name} (pid {c.pid})" for c in comps if c.alive()]
    cluster.stop(timeout)
    return names
