"""Container lifecycle and Pod status on a fake clock: restarts, back-off, phases, conditions."""

from __future__ import annotations

import datetime as dt

import pytest

from kopeck.localcluster.kubelet_spec import RestartPolicy
from kopeck.localcluster.kubelet_status import (
    Backoff,
    Conditions,
    ContainerState,
    desired_conditions,
    exit_code_of,
    init_done,
    next_init,
    pod_phase,
    pod_status,
    rfc3339,
    rfc3339_micro,
)

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
BACKOFF = Backoff(initial_s=1, max_s=8, reset_after_s=60)


def state(
    name: str = "main", policy: RestartPolicy = "Always", kind: str = "regular"
) -> ContainerState:
    return ContainerState(name=name, kind=kind, image="busybox", restart_policy=policy)  # type: ignore[arg-type]


def test_time_formats() -> None:
    assert rfc3339(T0) == "2026-01-02T03:04:05Z"
    assert rfc3339_micro(T0) == "2026-01-02T03:04:05.678901Z"
    assert exit_code_of(0) == 0 and exit_code_of(3) == 3
    assert exit_code_of(-9) == 137 and exit_code_of(-15) == 143


def test_always_restarts_with_doubling_backoff_capped() -> None:
    s = state(policy="Always")
    delays = []
    mono = 0.0
    for i in range(6):
        s.mark_started(f"containerd://{i}", T0, mono)
        assert s.restart_count == i
        assert s.mark_exited(0, T0, mono + 1, BACKOFF) is True
        delays.append(s.backoff_s)
        assert s.state == "waiting" and s.reason == "CrashLoopBackOff"
        assert not s.may_start(mono + 1 + s.backoff_s - 0.01)
        assert s.may_start(mono + 1 + s.backoff_s)
        mono += 1 + s.backoff_s
    assert delays == [1, 2, 4, 8, 8, 8]
    assert s.last_terminated is not None and s.last_terminated.container_id == "containerd://5"


def test_backoff_resets_after_a_long_run() -> None:
    s = state()
    s.mark_started("c1", T0, 0)
    s.mark_exited(1, T0, 1, BACKOFF)
    s.mark_started("c2", T0, 2)
    s.mark_exited(1, T0, 3, BACKOFF)
    assert s.backoff_s == 2
    s.mark_started("c3", T0, 5)
    s.mark_exited(1, T0, 100, BACKOFF)
    assert s.backoff_s == 1


def test_on_failure_restarts_only_failures() -> None:
    s = state(policy="OnFailure")
    s.mark_started("c1", T0, 0)
    assert s.mark_exited(3, T0, 1, BACKOFF) is True
    s.mark_started("c2", T0, 2)
    assert s.restart_count == 1
    assert s.mark_exited(0, T0, 3, BACKOFF) is False
    assert s.succeeded and s.done
    st = s.status()
    assert st["state"]["terminated"]["exitCode"] == 0
    assert st["state"]["terminated"]["reason"] == "Completed"
    assert st["lastState"]["terminated"]["exitCode"] == 3
    assert st["restartCount"] == 1 and st["ready"] is False


def test_never_terminates_for_good() -> None:
    s = state(policy="Never")
    s.mark_started("c1", T0, 0)
    assert s.mark_exited(2, T0, 1, BACKOFF) is False
    assert s.done and not s.succeeded
    assert s.status()["state"]["terminated"]["reason"] == "Error"


def test_running_status_shape() -> None:
    s = state()
    assert s.status()["state"] == {"waiting": {"reason": "ContainerCreating"}}
    s.mark_started("containerd://abc", T0, 0)
    st = s.status()
    assert st == {
        "name": "main",
        "ready": True,
        "started": True,
        "restartCount": 0,
        "image": "busybox",
        "imageID": "busybox",
        "state": {"running": {"startedAt": "2026-01-02T03:04:05Z"}},
        "lastState": {},
        "containerID": "containerd://abc",
    }


def done(policy: RestartPolicy, code: int) -> ContainerState:
    s = state(policy=policy)
    s.mark_started("c", T0, 0)
    s.mark_exited(code, T0, 1, BACKOFF)
    return s


def running(policy: RestartPolicy = "Always") -> ContainerState:
    s = state(policy=policy)
    s.mark_started("c", T0, 0)
    return s


@pytest.mark.parametrize(
    ("containers", "policy", "expected"),
    [
        ([state()], "Always", "Pending"),
        ([running()], "Always", "Running"),
        ([done("Always", 0)], "Always", "Running"),  # in back-off, will restart
        ([done("Never", 0)], "Never", "Succeeded"),
        ([done("Never", 1)], "Never", "Failed"),
        ([done("Never", 0), done("Never", 1)], "Never", "Failed"),
        ([done("Never", 0), running("Never")], "Never", "Running"),
        ([done("OnFailure", 0)], "OnFailure", "Succeeded"),
        ([done("OnFailure", 1)], "OnFailure", "Running"),  # restarting
        ([done("OnFailure", 0), state("b", "OnFailure")], "OnFailure", "Pending"),
    ],
)
def test_pod_phase(containers: list[ContainerState], policy: RestartPolicy, expected: str) -> None:
    assert pod_phase([], containers, policy, sandbox_ready=True) == expected


def test_pod_phase_with_init_containers() -> None:
    init = state("init", "OnFailure", kind="init")
    main = state()
    assert next_init([init]) is init
    assert pod_phase([init], [main], "Always", True) == "Pending"
    init.mark_started("i", T0, 0)
    init.mark_exited(0, T0, 1, BACKOFF)
    assert init_done([init]) and next_init([init]) is None
    failed = state("init", "Never", kind="init")
    failed.mark_started("i", T0, 0)
    failed.mark_exited(1, T0, 1, BACKOFF)
    assert pod_phase([failed], [main], "Never", True) == "Failed"
    side = state("side", "Always", kind="sidecar")
    assert not init_done([side])
    side.mark_started("s", T0, 0)
    assert init_done([side])  # a started sidecar lets the regular containers start
    assert pod_phase([], [main], "Always", sandbox_ready=False) == "Pending"


def test_conditions_keep_transition_time_until_status_changes() -> None:
    conds = Conditions()
    main = state()
    later = T0 + dt.timedelta(seconds=30)
    first = conds.render(desired_conditions("Pending", True, [], [main]), T0)
    ready = {c["type"]: c for c in first}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    main.mark_started("c", T0, 0)
    second = {
        c["type"]: c for c in conds.render(desired_conditions("Running", True, [], [main]), later)
    }
    assert second["Ready"]["status"] == "True" and second["Ready"]["reason"] is None
    assert second["Ready"]["lastTransitionTime"] == rfc3339(later)
    assert second["Initialized"]["lastTransitionTime"] == rfc3339(T0)
    existing = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}
    ]
    fresh = Conditions().render({"PodScheduled": (True, None)}, later, existing)
    assert fresh[0]["lastTransitionTime"] == "2025-01-01T00:00:00Z"


def test_completed_pod_conditions_and_status_body() -> None:
    s = done("Never", 0)
    desired = desired_conditions("Succeeded", False, [], [s])
    assert desired["Ready"] == (False, "PodCompleted")
    assert desired["PodReadyToStartContainers"] == (False, None)
    body = pod_status(
        phase="Succeeded",
        conditions=Conditions().render(desired, T0),
        host_ip="127.0.0.1",
        pod_ip="10.1.0.2",
        start_time=T0,
        qos="BestEffort",
        inits=[],
        containers=[s],
    )
    assert body["phase"] == "Succeeded"
    assert body["podIPs"] == [{"ip": "10.1.0.2"}] and body["hostIPs"] == [{"ip": "127.0.0.1"}]
    assert body["startTime"] == "2026-01-02T03:04:05Z"
    assert "initContainerStatuses" not in body
    assert body["message"] is None  # clears an earlier message in the merge patch
