"""Real pod sandboxes on this machine's kernel, laid out as a kubelet lays them out.

There is no container runtime here, yet the probe must be measured on real kernel data.
A sandbox is what a kubelet + runtime would leave behind for a pod: a pod cgroup and one
cgroup per container in the systemd or cgroupfs layout (v1 hierarchies and the v2 tree),
a network namespace with a veth pair on a bridge and the pod's IP, and real processes
(stress-ng, iperf3) inside. Everything is created under a unique cgroup prefix so that
concurrent tests and a real kubepods tree never mix, and everything is removed on close.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

log = logging.getLogger(__name__)

Driver = Literal["systemd", "cgroupfs"]
QoS = Literal["guaranteed", "burstable", "besteffort"]

CGROUP_BASE = Path("/sys/fs/cgroup")
# v1 controllers a kubelet creates pod cgroups in (cpuset needs cpus/mems set first: left out).
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids")
CFS_PERIOD_US = 100_000


def cgroup_layout(base: Path = CGROUP_BASE) -> dict[str, Path]:
    """Hierarchy name -> mount point: 'unified' for v2, plus each v1 controller (hybrid)."""
    if (base / "cgroup.controllers").exists():
        return {"unified": base}
    layout: dict[str, Path] = {}
    if (base / "unified" / "cgroup.procs").exists():
        layout["unified"] = base / "unified"
    for ctrl in V1_CONTROLLERS:
        if (base / ctrl / "cgroup.procs").exists():
            layout[ctrl] = base / ctrl
    return layout


def pod_relpath(driver: Driver, qos: QoS, uid: str) -> Path:
    """The pod cgroup path below the kubelet's root, as the kubelet names it."""
    if driver == "systemd":
        escaped = uid.replace("-", "_")
        if qos == "guaranteed":
            return Path("kubepods.slice") / f"kubepods-pod{escaped}.slice"
        return (
            Path("kubepods.slice")
            / f"kubepods-{qos}.slice"
            / f"kubepods-{qos}-pod{escaped}.slice"
        )
    if qos == "guaranteed":
        return Path("kubepods") / f"pod{uid}"
    return Path("kubepods") / qos / f"pod{uid}"


def container_dirname(driver: Driver, container_id: str) -> str:
    """The container cgroup's name (containerd's naming under each driver)."""
    return f"cri-containerd-{container_id}.scope" if driver == "systemd" else container_id


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _new_uid() -> str:
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-4{raw[13:16]}-a{raw[17:20]}-{raw[20:32]}"


@dataclass
class Container:
    """One container of a sandbox: its cgroup directories and the processes started in it."""

    name: str
    container_id: str
    dirs: dict[str, Path]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@dataclass
class PodSandbox:
    """A pod as the kernel sees it: cgroups, a network namespace, and processes."""

    host: SandboxHost
    uid: str
    qos: QoS
    dirs: dict[str, Path]
    namespace: str = "default"
    name: str = ""
    ip: str | None = None
    netns: str | None = None
    host_veth: str | None = None
    cpu_limit_cores: float | None = None
    memory_limit_bytes: int | None = None
    containers: dict[str, Container] = field(default_factory=dict)
    closed: bool = False

    def cgroup_dirs(self) -> dict[str, Path]:
        """Hierarchy -> this pod's cgroup directory."""
        return dict(self.dirs)

    def container_dirs(self, container: str = "main") -> dict[str, Path]:
        """Hierarchy -> the container's cgroup directory (created on first use)."""
        return dict(self._container(container).dirs)

    def cgroup_inode(self) -> int:
        """The pod's cgroup v2 id, as bpf_skb_cgroup_id returns it."""
        return self.dirs["unified"].stat().st_ino

    def _container(self, name: str) -> Container:
        if name not in self.containers:
            cid = secrets.token_hex(32)
            dirname = container_dirname(self.host.driver, cid)
            dirs: dict[str, Path] = {}
            for hier, pod_dir in self.dirs.items():
                cdir = pod_dir / dirname
                cdir.mkdir()
                dirs[hier] = cdir
            self.host.apply_limits(dirs, self.cpu_limit_cores, self.memory_limit_bytes)
            self.containers[name] = Container(name=name, container_id=cid, dirs=dirs)
        return self.containers[name]

    def run(
        self, argv: Sequence[str], container: str = "main", **popen_kw: Any
    ) -> subprocess.Popen[bytes]:
        """Start argv inside the container's cgroups (every hierarchy) and the pod netns."""
        if self.closed:
            raise RuntimeError(f"sandbox of pod {self.uid} is closed")
        ctr = self._container(container)
        procs_files = [d / "cgroup.procs" for d in ctr.dirs.values()]

        def join_cgroups() -> None:
            pid = str(os.getpid())
            for f in procs_files:
                with open(f, "w") as fh:
                    fh.write(pid)

        full = list(argv)
        if self.netns:
            full = ["ip", "netns", "exec", self.netns, *full]
        popen_kw.setdefault("stdout", subprocess.PIPE)
        popen_kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(
            full, preexec_fn=join_cgroups, start_new_session=True, **popen_kw
        )
        ctr.procs.append(proc)
        return proc

    def exec(
        self, argv: Sequence[str], container: str = "main", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run argv to completion inside the sandbox and return its output."""
        proc = self.run(argv, container=container)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            raise
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def _pids_in_cgroups(self) -> set[int]:
        pids: set[int] = set()
        for ctr in self.containers.values():
            for d in ctr.dirs.values():
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return pids

    def stop_processes(self) -> None:
        """End every process this sandbox started, and their descendants still in its cgroups."""
        for ctr in self.containers.values():
            for proc in ctr.procs:
                self._kill(proc)
        deadline = time.monotonic() + 10
        while (pids := self._pids_in_cgroups()) and time.monotonic() < deadline:
            # Only descendants of processes we started can be in these cgroups.
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def remove_container(self, container: str = "main") -> None:
        """Stop a container's processes and remove its cgroups (as a runtime does on exit)."""
        ctr = self.containers.pop(container)
        for proc in ctr.procs:
            self._kill(proc)
        for d in ctr.dirs.values():
            _rmdir_retry(d)

    def close(self) -> None:
        """Remove the pod: processes, container and pod cgroups, netns and veth."""
        if self.closed:
            return
        self.closed = True
        self.stop_processes()
        for name in list(self.containers):
            with contextlib.suppress(OSError):
                self.remove_container(name)
        for d in self.dirs.values():
            _rmdir_retry(d)
        if self.netns:
            _run_ip("netns", "del", self.netns, check=False)
        if self.host_veth:
            _run_ip("link", "del", self.host_veth, check=False)
        self.host.forget(self)


def _rmdir_retry(path: Path, attempts: int = 50) -> None:
    for _ in range(attempts):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    log.warning("could not remove cgroup %s", path)


class SandboxHost:
    """A node's worth of pod sandboxes under one unique cgroup prefix and one bridge."""

    def __init__(
        self,
        driver: Driver = "systemd",
        prefix: str | None = None,
        subnet: str = "10.251.0.0/24",
        cgroup_base: Path = CGROUP_BASE,
        network: bool = True,
    ) -> None:
        self.driver: Driver = driver
        tag = secrets.token_hex(3)
        self.prefix = prefix if prefix is not None else f"kopeck-test-{os.getpid()}-{tag}"
        self.cgroup_base = cgroup_base
        self.layout = cgroup_layout(cgroup_base)
        if "unified" not in self.layout:
            raise RuntimeError(f"no cgroup v2 hierarchy found under {cgroup_base}")
        self.subnet = ipaddress.ip_network(subnet)
        self._hosts: Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address] = iter(
            self.subnet.hosts()
        )
        self.pods: list[PodSandbox] = []
        self.bridge: str | None = None
        self._tag = tag
        self._made_dirs: list[Path] = []
        self._wired = 0
        if network:
            self.bridge = f"kpkbr{tag}"
            _run_ip("link", "add", self.bridge, "type", "bridge")
            _run_ip("link", "set", self.bridge, "up")

    # -- layout ------------------------------------------------------------------------
    def root_dir(self, hierarchy: str) -> Path:
        """The prefix directory in one hierarchy (the probe's configured parent)."""
        return self.layout[hierarchy] / self.prefix

    def pods_parent(self, hierarchy: str = "unified") -> Path:
        """The kubepods directory (kubepods.slice or kubepods) in one hierarchy."""
        top = "kubepods.slice" if self.driver == "systemd" else "kubepods"
        return self.root_dir(hierarchy) / top

    def pods_parent_v2(self) -> Path:
        """The v2 directory to attach per-cgroup BPF programs at (covers every pod)."""
        return self.pods_parent("unified")

    def ensure_qos_tree(self) -> None:
        """Create kubepods and its QoS cgroups in every hierarchy now, as a kubelet does at
        start-up, so that readers attaching at the parent (eBPF) find it before any pod."""
        for hier in self.layout:
            parent = self.pods_parent(hier)
            self._ensure_dir(parent)
            for qos in ("burstable", "besteffort"):
                name = f"kubepods-{qos}.slice" if self.driver == "systemd" else qos
                self._ensure_dir(parent / name)

    def _ensure_dir(self, path: Path) -> None:
        missing: list[Path] = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self._made_dirs.append(d)

    def apply_limits(
        self, dirs: dict[str, Path], cpu_limit_cores: float | None, memory_limit_bytes: int | None
    ) -> None:
        """Write CPU and memory limits the way the kubelet does (v1 CFS quota, memory limit)."""
        if cpu_limit_cores is not None and "cpu" in dirs:
            _write(dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(dirs["cpu"] / "cpu.cfs_quota_us", str(round(cpu_limit_cores * CFS_PERIOD_US)))
        if memory_limit_bytes is not None and "memory" in dirs:
            _write(dirs["memory"] / "memory.limit_in_bytes", str(memory_limit_bytes))
        unified = dirs.get("unified")
        if unified is not None:
            if cpu_limit_cores is not None and (unified / "cpu.max").exists():
                _write(unified / "cpu.max", f"{round(cpu_limit_cores * CFS_PERIOD_US)} {CFS_PERIOD_US}")
            if memory_limit_bytes is not None and (unified / "memory.max").exists():
                _write(unified / "memory.max", str(memory_limit_bytes))

    # -- pods --------------------------------------------------------------------------
    def pod(
        self,
        qos: QoS = "burstable",
        network: bool = True,
        uid: str | None = None,
        namespace: str = "default",
        name: str = "",
        cpu_limit_cores: float | None = None,
        memory_limit_bytes: int | None = None,
        ip: str | None = None,
    ) -> PodSandbox:
        """Create a pod sandbox: cgroups in every hierarchy and, optionally, its network."""
        uid = uid or _new_uid()
        rel = pod_relpath(self.driver, qos, uid)
        dirs: dict[str, Path] = {}
        try:
            for hier in self.layout:
                pod_dir = self.root_dir(hier) / rel
                self._ensure_dir(pod_dir.parent)
                pod_dir.mkdir()
                dirs[hier] = pod_dir
            pod = PodSandbox(
                host=self,
                uid=uid,
                qos=qos,
                dirs=dirs,
                namespace=namespace,
                name=name or f"pod-{uid[:8]}",
                cpu_limit_cores=cpu_limit_cores,
                memory_limit_bytes=memory_limit_bytes,
            )
            self.apply_limits(dirs, cpu_limit_cores, memory_limit_bytes)
            self.pods.append(pod)
            if network:
                self._wire(pod, ip)
        except BaseException:
            for d in dirs.values():
                _rmdir_retry(d, attempts=1)
            raise
        return pod

    def _wire(self, pod: PodSandbox, ip: str | None) -> None:
        if self.bridge is None:
            raise RuntimeError("this SandboxHost was made without network")
        self._wired += 1  # only goes up: a closed pod's names are never reused while live
        short = f"{self._tag}{self._wired:03d}"
        pod.netns = f"kpk-{short}"
        pod.host_veth = f"kpv{short}"
        peer = f"kpp{short}"
        address = ip or str(next(self._hosts))
        _run_ip("netns", "add", pod.netns)
        _run_ip("link", "add", pod.host_veth, "type", "veth", "peer", "name", peer)
        _run_ip("link", "set", peer, "netns", pod.netns)
        _run_ip("link", "set", pod.host_veth, "master", self.bridge)
        _run_ip("link", "set", pod.host_veth, "up")
        ns = ["-n", pod.netns]
        _run_ip(*ns, "link", "set", peer, "name", "eth0")
        _run_ip(*ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _run_ip(*ns, "link", "set", "eth0", "up")
        _run_ip(*ns, "link", "set", "lo", "up")
        pod.ip = address

    def forget(self, pod: PodSandbox) -> None:
        """Called by a pod's close()."""
        if pod in self.pods:
            self.pods.remove(pod)

    def close(self) -> None:
        """Remove every pod, the bridge, and the prefix directories this host created."""
        for pod in list(self.pods):
            try:
                pod.close()
            except Exception:  # keep cleaning the rest
                log.exception("closing sandbox of pod %s", pod.uid)
        for d in reversed(self._made_dirs):
            _rmdir_retry(d, attempts=20)
        self._made_dirs.clear()
        if self.bridge:
            _run_ip("link", "del", self.bridge, check=False)
            self.bridge = None

    def __enter__(self) -> SandboxHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
