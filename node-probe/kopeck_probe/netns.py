"""Pods' network namespaces: pod cgroup -> a process in it -> its netns and addresses.

The veth fallback maps a pod's veths through its namespace, and the flow source finds the
IPs of pods the Pod watch does not list (``--no-watch``) there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kopeck_probe.cgroups import Hierarchies, discover


@dataclass
class PodNet:
    """A pod cgroup's network namespace, as found through one of its processes."""

    uid: str
    relpath: str
    inode: int
    netns_ino: int | None = None
    pid: int | None = None
    veths: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    first_seen: float = 0.0


def _own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


class PodNetns:
    """Pod cgroups -> a process in each -> its network namespace; cached per pod cgroup.

    A pod whose process is still in the host's namespace (host network, or a runtime
    that has not entered the pod's yet) is looked at again on the next refresh.
    """

    def __init__(self, cgroup_base: Path, prefix: str = "") -> None:
        h = Hierarchies.detect(cgroup_base)
        self.walk_root = h.walk_root()
        self.inode_root = h.unified or self.walk_root
        self.procs_roots = [r for r in (h.unified, h.cpuacct, h.memory) if r is not None]
        self.prefix = prefix
        self.pods: dict[str, PodNet] = {}
        self._host_netns = _own_netns()
        self.lock = threading.Lock()

    def refresh(self, now: float, resolve: Callable[[PodNet], None] | None = None) -> bool:
        """Re-walk the pods; resolve the namespaces not yet known. True when anything
        changed (a pod came, went or got its namespace)."""
        found = {p.relpath: p.uid for p in discover(self.walk_root, self.prefix)}
        changed = False
        for rel in [r for r in self.pods if r not in found]:
            del self.pods[rel]
            changed = True
        for rel, uid in found.items():
            pod = self.pods.get(rel)
            if pod is None:
                try:
                    ino = os.stat(self.inode_root / rel).st_ino
                except OSError:
                    continue
                pod = self.pods[rel] = PodNet(uid, rel, ino, first_seen=now)
                changed = True
            if pod.netns_ino is None and self._resolve_netns(pod):
                if resolve is not None:
                    resolve(pod)
                changed = True
        return changed

    def _pids(self, rel: str) -> Iterator[int]:
        for root in self.procs_roots:
            base = root / rel
            dirs = [base]
            with contextlib.suppress(OSError), os.scandir(base) as it:
                dirs += [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
            for d in dirs:
                with contextlib.suppress(OSError):
                    for line in (d / "cgroup.procs").read_text().split():
                        yield int(line)

    def _resolve_netns(self, pod: PodNet) -> bool:
        for pid in self._pids(pod.relpath):
            try:
                ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            if ino == self._host_netns:
                continue
            pod.netns_ino, pod.pid = ino, pid
            return True
        return False


def parse_fib_trie_local(text: str) -> list[str]:
    """This namespace's own IPv4 addresses from /proc/<pid>/net/fib_trie ('/32 host LOCAL')."""
    out: list[str] = []
    last = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|--") or s.startswith("+--"):
            last = s[3:].strip().split()[0]
        elif s.startswith("/32 host LOCAL") and last and last not in out:
            out.append(last)
    return [a for a in out if not ipaddress.ip_address(a).is_loopback]


def parse_if_inet6(text: str) -> list[str]:
    """Global IPv6 addresses from /proc/<pid>/net/if_inet6 (scope 0), loopback excluded."""
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and int(parts[3], 16) == 0 and parts[5] != "lo":
            out.append(str(ipaddress.IPv6Address(int(parts[0], 16))))
    return out


def netns_addresses(pid: int) -> tuple[str, ...]:
    """The addresses a process's network namespace holds (its pod IPs), read via /proc."""
    ips: list[str] = []
    with contextlib.suppress(OSError):
        ips += parse_fib_trie_local(Path(f"/proc/{pid}/net/fib_trie").read_text())
    with contextlib.suppress(OSError):
        ips += parse_if_inet6(Path(f"/proc/{pid}/net/if_inet6").read_text())
    return tuple(ips)
