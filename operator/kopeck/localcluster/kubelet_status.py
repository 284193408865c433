"""Container lifecycle decisions and the Pod status the mini-kubelet posts (pure).

The kubelet's rules — when a container restarts and after how long, which phase a Pod is in,
what its conditions and containerStatuses say — depend only on what happened to the
processes. Keeping them here, apart from processes and HTTP, lets unit tests drive a Pod
through exits and restarts on a fake clock and check the exact status a real kubelet posts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kopeck.localcluster.kubelet_spec import ContainerKind, ContainerPlan, RestartPolicy

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
StateName = Literal["waiting", "running", "terminated"]


def rfc3339(when: dt.datetime) -> str:
    """Seconds-resolution UTC time as Kubernetes writes metav1.Time."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(when: dt.datetime) -> str:
    """Microsecond UTC time as Kubernetes writes metav1.MicroTime (Lease renewTime)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def exit_code_of(returncode: int) -> int:
    """Popen's returncode (-N for signal N) as a container exit code (128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class Terminated:
    """A finished run of a container, as ContainerStateTerminated reports it."""

    exit_code: int
    reason: str
    started_at: dt.datetime | None
    finished_at: dt.datetime
    container_id: str | None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "finishedAt": rfc3339(self.finished_at),
        }
        if self.started_at is not None:
            out["startedAt"] = rfc3339(self.started_at)
        if self.container_id:
            out["containerID"] = self.container_id
        if self.message:
            out["message"] = self.message
        return out


@dataclass(frozen=True)
class Backoff:
    """CrashLoopBackOff timing: initial delay doubling up to max; reset after a long run.

    The real kubelet starts at 10 s and caps at 300 s; the defaults here are shorter so
    that tests and the demo see restarts within seconds.
    """

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0

    def next_delay(self, previous_s: float, ran_s: float) -> float:
        if previous_s <= 0 or ran_s >= self.reset_after_s:
            return self.initial_s
        return min(previous_s * 2, self.max_s)


@dataclass
class ContainerState:
    """What the kubelet knows of one container of one Pod (mutable, owned by its pod worker)."""

    name: str
    kind: ContainerKind
    image: str
    restart_policy: RestartPolicy
    state: StateName = "waiting"
    reason: str | None = "ContainerCreating"
    message: str | None = None
    container_id: str | None = None
    started_at: dt.datetime | None = None
    started_mono: float = 0.0
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    restart_count: int = 0
    backoff_s: float = 0.0
    next_start_mono: float = 0.0
    runs: int = 0

    @classmethod
    def from_plan(cls, plan: ContainerPlan) -> ContainerState:
        return cls(
            name=plan.name, kind=plan.kind, image=plan.image, restart_policy=plan.restart_policy
        )

    @property
    def done(self) -> bool:
        """Terminated for good: it will not run again."""
        return self.state == "terminated"

    @property
    def succeeded(self) -> bool:
        return self.terminated is not None and self.terminated.exit_code == 0 and self.done

    def may_start(self, now_mono: float) -> bool:
        """Waiting, and past its back-off (if any)."""
        return self.state == "waiting" and now_mono >= self.next_start_mono

    def mark_started(self, container_id: str, now: dt.datetime, now_mono: float) -> None:
        """A new run began; every run after the first counts as a restart."""
        if self.runs > 0:
            self.restart_count += 1
        self.runs += 1
        self.state = "running"
        self.reason = None
        self.message = None
        self.container_id = container_id
        self.started_at = now
        self.started_mono = now_mono

    def mark_exited(
        self,
        exit_code: int,
        now: dt.datetime,
        now_mono: float,
        backoff: Backoff,
        reason: str | None = None,
        message: str | None = None,
    ) -> bool:
        """Record an exit and decide per restart policy; True when it will run again."""
        ran_s = max(0.0, now_mono - self.started_mono) if self.state == "running" else 0.0
        run = Terminated(
            exit_code=exit_code,
            reason=reason or ("Completed" if exit_code == 0 else "Error"),
            started_at=self.started_at if self.state == "running" else None,
            finished_at=now,
            container_id=self.container_id,
            message=message,
        )
        restart = self.restart_policy == "Always" or (
            self.restart_policy == "OnFailure" and exit_code != 0
        )
        if not restart:
            self.state = "terminated"
            self.terminated = run
            self.reason = None
            return False
        self.last_terminated = run
        self.backoff_s = backoff.next_delay(self.backoff_s, ran_s)
        self.next_start_mono = now_mono + self.backoff_s
        self.state = "waiting"
        self.reason = "CrashLoopBackOff"
        self.message = f"back-off {self.backoff_s:g}s restarting failed container={self.name}"
        self.container_id = None
        return True

    def mark_killed(self, now: dt.datetime, exit_code: int = 137) -> None:
        """Stopped by the kubelet (pod deletion or finished pod): terminated for good."""
        if self.state == "running":
            self.terminated = Terminated(
                exit_code=exit_code,
                reason="Error" if exit_code else "Completed",
                started_at=self.started_at,
                finished_at=now,
                container_id=self.container_id,
            )
        elif self.terminated is None and self.last_terminated is not None:
            self.terminated = self.last_terminated
        self.state = "terminated"

    def status(self) -> dict[str, Any]:
        """This container's entry of status.containerStatuses / initContainerStatuses."""
        running = self.state == "running"
        state: dict[str, Any]
        if running:
            state = {"running": {"startedAt": rfc3339(self.started_at or dt.datetime.now(dt.UTC))}}
        elif self.state == "terminated" and self.terminated is not None:
            state = {"terminated": self.terminated.as_dict()}
        else:
            waiting: dict[str, Any] = {"reason": self.reason or "ContainerCreating"}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        out: dict[str, Any] = {
            "name": self.name,
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": self.image,
            "state": state,
            "lastState": (
                {"terminated": self.last_terminated.as_dict()} if self.last_terminated else {}
            ),
        }
        cid = self.container_id or (self.terminated.container_id if self.terminated else None)
        if cid:
            out["containerID"] = cid
        return out


def init_done(inits: Iterable[ContainerState]) -> bool:
    """Every init container succeeded (or, for a sidecar, started): regular ones may start."""
    for c in inits:
        if c.kind == "sidecar":
            if c.runs == 0:
                return False
        elif not c.succeeded:
            return False
    return True


def next_init(inits: Iterable[ContainerState]) -> ContainerState | None:
    """The init container to run now: the first not yet done, in spec order."""
    for c in inits:
        if c.kind == "sidecar":
            if c.runs == 0:
                return c
            continue
        if not c.succeeded:
            return c
    return None


def pod_phase(
    inits: Iterable[ContainerState],
    containers: Iterable[ContainerState],
    restart_policy: RestartPolicy,
    sandbox_ready: bool,
) -> Phase:
    """The Pod phase by the kubelet's getPhase rules (sidecars do not count)."""
    inits = list(inits)
    containers = list(containers)
    if any(c.kind == "init" and c.done and not c.succeeded for c in inits):
        return "Failed"
    if not sandbox_ready or not init_done(inits):
        return "Pending"
    waiting = running = stopped = succeeded = 0
    for c in containers:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            if c.succeeded:
                succeeded += 1
        elif c.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if restart_policy == "Never":
        return "Failed"
    return "Running"


@dataclass
class Conditions:
    """Pod conditions with lastTransitionTime kept across updates (it moves only on change)."""

    seen: dict[str, tuple[str, str]] = field(default_factory=dict)

    def render(
        self,
        desired: Mapping[str, tuple[bool, str | None]],
        now: dt.datetime,
        existing: Iterable[Mapping[str, Any]] = (),
    ) -> list[dict[str, Any]]:
        """type -> (status, reason) as condition dicts, in the order given."""
        for cond in existing:
            ctype = cond.get("type")
            if ctype and ctype not in self.seen and cond.get("lastTransitionTime"):
                self.seen[ctype] = (str(cond.get("status")), str(cond["lastTransitionTime"]))
        out: list[dict[str, Any]] = []
        for ctype, (ok, reason) in desired.items():
            status = "True" if ok else "False"
            prev = self.seen.get(ctype)
            if prev is None or prev[0] != status:
                prev = (status, rfc3339(now))
                self.seen[ctype] = prev
            rendered: dict[str, Any] = {
                "type": ctype,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": prev[1],
            }
            # Always sent: a strategic-merge patch keeps a reason the new condition lacks.
            rendered["reason"] = reason
            out.append(rendered)
        return out


def desired_conditions(
    phase: Phase,
    sandbox_ready: bool,
    inits: Iterable[ContainerState],
    containers: Iterable[ContainerState],
) -> dict[str, tuple[bool, str | None]]:
    """PodReadyToStartContainers, Initialized, ContainersReady, Ready, PodScheduled."""
    inits = list(inits)
    containers = list(containers)
    initialized = init_done(inits)
    all_ready = bool(containers) and all(c.state == "running" for c in containers)
    terminal = phase in ("Succeeded", "Failed")
    not_ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
    return {
        "PodReadyToStartContainers": (sandbox_ready and not terminal, None),
        "Initialized": (
            initialized or terminal,
            None if initialized or terminal else "ContainersNotInitialized",
        ),
        "ContainersReady": (all_ready, None if all_ready else not_ready_reason),
        "Ready": (all_ready, None if all_ready else not_ready_reason),
        "PodScheduled": (True, None),
    }


def pod_status(
    *,
    phase: Phase,
    conditions: list[dict[str, Any]],
    host_ip: str,
    pod_ip: str | None,
    start_time: dt.datetime | None,
    qos: str,
    inits: Iterable[ContainerState],
    containers: Iterable[ContainerState],
    message: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The body of a strategic-merge patch to the Pod's status subresource."""
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "qosClass": qos,
        "containerStatuses": [c.status() for c in containers],
    }
    init_list = [c.status() for c in inits]
    if init_list:
        status["initContainerStatuses"] = init_list
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if start_time is not None:
        status["startTime"] = rfc3339(start_time)
    # null clears what an earlier patch set (strategic merge keeps absent keys)
    status["message"] = message
    status["reason"] = reason
    return status
