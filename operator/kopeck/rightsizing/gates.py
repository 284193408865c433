"""Policy gates: does an exemption or an open time window suspend a proposal or enforcement?

Pure: the caller passes the instant, the workload's namespace and labels, and the policy's
``windows`` and ``exemptions``; the answer says why, for a condition or Event message.
Windows are wall-clock times in their IANA zone (zoneinfo), so "09:00-17:00 Europe/Berlin"
follows daylight saving time: on the spring-forward day a window inside the skipped hour is
never open, on the fall-back day a window inside the repeated hour is open twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kopeck.accounting.matching import selector_matches
from kopeck.api.costpolicy import CostPolicySpec, Exemptions, TimeWindow

Action = Literal["Rightsizing", "Enforcement"]
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class GateDecision:
    """Whether the action is suspended, and a sentence saying why (or why not)."""

    suspended: bool
    reason: str
    problems: tuple[str, ...] = field(default=())
    """Windows that could not be evaluated (e.g. an unknown time zone); they were ignored."""

    def __bool__(self) -> bool:
        return self.suspended


def _zone(window: TimeWindow) -> ZoneInfo:
    try:
        return ZoneInfo(window.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"window {window.name or window.start + '-' + window.end}: timeZone "
            f"{window.time_zone!r} is not an IANA zone; use e.g. 'Europe/Berlin' or 'UTC'"
        ) from exc


def window_open(window: TimeWindow, at: dt.datetime) -> bool:
    """True when ``at`` falls on one of the window's days, in [start, end) local time."""
    if at.tzinfo is None:
        raise ValueError(f"instant {at} has no time zone; pass an aware datetime")
    local = at.astimezone(_zone(window))
    if _WEEKDAYS[local.weekday()] not in window.days:
        return False
    hhmm = f"{local.hour:02d}:{local.minute:02d}"
    return window.start <= hhmm < window.end


def describe_window(window: TimeWindow) -> str:
    """A short human description, e.g. 'business-hours (Mon,Tue 09:00-17:00 Europe/Berlin)'."""
    span = f"{','.join(window.days)} {window.start}-{window.end} {window.time_zone}"
    return f"{window.name} ({span})" if window.name else span


def exempt(exemptions: Exemptions | None, namespace: str, labels: Mapping[str, str]) -> str | None:
    """Why a workload is exempt, or None.

    An empty exemption selector exempts nothing: exempting every workload is never what a
    policy author meant, and a policy with no effect is the safer mistake.
    """
    if exemptions is None:
        return None
    if namespace in (exemptions.namespaces or []):
        return f"namespace {namespace} is exempt"
    sel = exemptions.selector
    if sel is not None and not sel.is_empty() and selector_matches(sel, labels):
        return "the workload's labels match the exemption selector"
    return None


def gate(
    action: Action,
    at: dt.datetime,
    namespace: str,
    labels: Mapping[str, str],
    *,
    windows: Sequence[TimeWindow] | None = None,
    exemptions: Exemptions | None = None,
) -> GateDecision:
    """Whether ``action`` is suspended for the workload at ``at``.

    Exemptions suspend both actions always; a window suspends the actions in its
    ``appliesTo`` while open, for workloads its selector matches.
    """
    why = exempt(exemptions, namespace, labels)
    if why is not None:
        return GateDecision(True, f"{action} suspended: {why}")
    problems: list[str] = []
    for window in windows or []:
        if action not in window.applies_to or not selector_matches(window.selector, labels):
            continue
        try:
            is_open = window_open(window, at)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if is_open:
            return GateDecision(
                True,
                f"{action} suspended: window {describe_window(window)} is open",
                tuple(problems),
            )
    return GateDecision(False, f"{action} allowed", tuple(problems))


def policy_gate(
    spec: CostPolicySpec,
    action: Action,
    at: dt.datetime,
    namespace: str,
    labels: Mapping[str, str],
) -> GateDecision:
    """``gate`` with the windows and exemptions of a CostPolicy spec."""
    return gate(action, at, namespace, labels, windows=spec.windows, exemptions=spec.exemptions)
