"""Usage history from Prometheus, for the same recommenders as the embedded histograms.

The series are the node-probe's own (``kopeck_probe.metrics``): the counter
``kopeck_container_cpu_seconds_total`` and the gauge
``kopeck_container_memory_working_set_bytes``, labelled namespace, pod, uid, container.
A range query at ``step`` gives, per pod and container, the average cores over each step
(``rate``) and the step's highest working set (``max_over_time``); each point becomes one
sample of a ``ContainerHistory`` weighted by the step, exactly as a probe report of that
length would. Parsing the query results (``history_from_results``) is pure and tested on
recorded results; ``PrometheusHistorySource`` only asks the questions.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from kopeck.rightsizing.history import WorkloadHistory

CPU_METRIC = "kopeck_container_cpu_seconds_total"
"""Counter of CPU core-seconds per container (node-probe metrics.py)."""
MEMORY_METRIC = "kopeck_container_memory_working_set_bytes"
"""Gauge of the container's working set (node-probe metrics.py)."""
CONTAINER_LABEL = "container"
POD_LABEL = "pod"
MAX_POINTS_PER_SERIES = 11_000
"""Prometheus refuses range queries with more points per series than this."""

_POD_SUFFIX = {
    # How a controller names its pods, as a regex after the workload name.
    "Deployment": r"-[a-z0-9]+-[a-z0-9]+",
    "ReplicaSet": r"-[a-z0-9]+",
    "StatefulSet": r"-[0-9]+",
    "DaemonSet": r"-[a-z0-9]+",
    "Job": r"-[a-z0-9]+",
    "CronJob": r"-[0-9]+-[a-z0-9]+",
    "Pod": "",
}


def _promql_string(value: str) -> str:
    """A PromQL double-quoted string literal (Go escapes, which JSON's are a subset of)."""
    return json.dumps(value)


def pod_regex(kind: str, name: str) -> str:
    """An RE2 regex matching the pods a controller of ``kind`` named ``name`` creates."""
    suffix = _POD_SUFFIX.get(kind, r"-[a-z0-9-]+")
    return re.escape(name) + suffix


def selector(namespace: str, pod_pattern: str) -> str:
    """The label matchers of one workload's series."""
    return (
        f"namespace={_promql_string(namespace)},"
        f'{POD_LABEL}=~{_promql_string(pod_pattern)},{CONTAINER_LABEL}!=""'
    )


def cpu_query(namespace: str, pod_pattern: str, window: dt.timedelta) -> str:
    """Average cores per pod and container over each ``window`` (the probe's counter)."""
    return f"rate({CPU_METRIC}{{{selector(namespace, pod_pattern)}}}[{_seconds(window)}s])"


def memory_query(namespace: str, pod_pattern: str, window: dt.timedelta) -> str:
    """Highest working set per pod and container over each ``window``."""
    return (
        f"max_over_time({MEMORY_METRIC}{{{selector(namespace, pod_pattern)}}}[{_seconds(window)}s])"
    )


def _seconds(delta: dt.timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


def step_for(window: dt.timedelta, step: dt.timedelta) -> dt.timedelta:
    """``step``, widened when the history window would need too many points per series."""
    needed = math.ceil(window.total_seconds() / MAX_POINTS_PER_SERIES)
    return dt.timedelta(seconds=max(_seconds(step), needed))


def _points(
    series: Iterable[Mapping[str, Any]],
) -> Iterable[tuple[float, str, float]]:
    for s in series:
        container = str(s.get("metric", {}).get(CONTAINER_LABEL, ""))
        for ts, raw in s.get("values", []):
            value = float(raw)
            if math.isfinite(value):
                yield float(ts), container, value


def history_from_results(
    cpu_series: Iterable[Mapping[str, Any]],
    memory_series: Iterable[Mapping[str, Any]],
    step: dt.timedelta,
) -> WorkloadHistory:
    """Build a workload's history from range-query results (``result`` of a matrix).

    Points are folded in time order across pods, so memory windows close in order, as they
    do when reports arrive.
    """
    weight = step.total_seconds()
    events: list[tuple[float, int, str, float]] = []
    events.extend((t, 0, c, v) for t, c, v in _points(cpu_series))
    events.extend((t, 1, c, v) for t, c, v in _points(memory_series))
    events.sort()
    history = WorkloadHistory()
    for t, kind, container, value in events:
        hist = history.container(container)
        if kind == 0:
            hist.add_cpu_sample(t, max(value, 0.0), weight)
        else:
            hist.add_memory_peak(t, int(value))
    return history


class RangeQueryClient(Protocol):
    """What we use of prometheus_api_client.PrometheusConnect (a fake in unit tests)."""

    def custom_query_range(
        self, query: str, start_time: dt.datetime, end_time: dt.datetime, step: str
    ) -> list[dict[str, Any]]:
        """A range query's ``result`` list."""
        ...


class PrometheusHistorySource:
    """Reads a workload's usage history from a Prometheus that scrapes the node-probes."""

    def __init__(
        self,
        url: str | None = None,
        *,
        step: dt.timedelta = dt.timedelta(seconds=60),
        client: RangeQueryClient | None = None,
        headers: dict[str, str] | None = None,
        disable_ssl: bool = False,
        timeout_seconds: int = 30,
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("PrometheusHistorySource needs a url or a client")
            from prometheus_api_client import PrometheusConnect

            client = PrometheusConnect(
                url=url, headers=headers, disable_ssl=disable_ssl, timeout=timeout_seconds
            )
        self.client: RangeQueryClient = client
        self.step = step

    def workload_history(
        self,
        namespace: str,
        pod_pattern: str,
        *,
        now: dt.datetime,
        window: dt.timedelta,
    ) -> WorkloadHistory:
        """The history of every container of the pods matching ``pod_pattern``.

        Use ``pod_regex(kind, name)`` for a controller's pods.
        """
        step = step_for(window, self.step)
        start = now - window
        step_text = f"{_seconds(step)}s"
        cpu = self.client.custom_query_range(
            cpu_query(namespace, pod_pattern, step), start, now, step_text
        )
        memory = self.client.custom_query_range(
            memory_query(namespace, pod_pattern, step), start, now, step_text
        )
        return history_from_results(cpu, memory, step)
