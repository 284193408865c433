"""CostPolicy: what the platform team wants (prices, budget, enforcement, rightsizing).

Cluster-scoped, so a team cannot delete its own budget. The CRD schema, including the CEL
rules below, is generated from these models by ``kopeck crds``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from kopeck.api.common import (
    Condition,
    KopeckModel,
    LabelSelector,
    LabelSelectorRequirement,
    MoneyString,
    StatusModel,
    Timestamp,
)

Enforcement = Literal["Deny", "Warn", "Audit"]
BudgetPeriod = Literal["Daily", "Weekly", "Monthly"]
Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
Gate = Literal["Rightsizing", "Enforcement"]
DEFAULT_GATES: tuple[Gate, ...] = ("Rightsizing",)
WORKDAYS: tuple[Weekday, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri")
HHMM = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", max_length=5)]

# Label syntax exactly as Kubernetes validates it (apimachinery IsQualifiedName and
# IsValidLabelValue): a selector the apiserver would refuse in the webhook configuration
# must already be refused at `kubectl apply`.
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_PATTERN = rf"^({DNS_SUBDOMAIN}/)?{LABEL_NAME}$"
LABEL_KEY_MAX = 253 + 1 + 63
LABEL_PREFIX_MAX = 253
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_VALUE_MAX = 63
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
MAX_LABELS = 64
MAX_VALUES = 256
POLICY_NAME_MAX = 231
"""`<name>.budget.cost.kopeck.io` names the policy's webhook and must stay <= 253 chars."""

_VALUE_CEL = f"size(v) <= {LABEL_VALUE_MAX} && v.matches(r'{LABEL_VALUE_PATTERN}')"


def label_key_problem(key: str) -> str | None:
    """Why Kubernetes would refuse `key` as a label key, or None."""
    if not re.match(LABEL_KEY_PATTERN, key) or len(key) > LABEL_KEY_MAX:
        return (f"label key {key!r} is not a qualified name: an optional DNS-subdomain "
                "prefix and '/', then at most 63 of [A-Za-z0-9-_.] starting and ending "
                "alphanumeric")
    if "/" in key and key.index("/") > LABEL_PREFIX_MAX:
        return f"label key {key!r}: the prefix before '/' is longer than 253 characters"
    return None


def label_value_problem(value: str) -> str | None:
    """Why Kubernetes would refuse `value` as a label value, or None."""
    if len(value) > LABEL_VALUE_MAX or not re.match(LABEL_VALUE_PATTERN, value):
        return (f"label value {value[:80]!r} is not valid: at most 63 of [A-Za-z0-9-_.], "
                "starting and ending alphanumeric (or empty)")
    return None


def _check_key(key: str) -> str:
    problem = label_key_problem(key)
    if problem:
        raise ValueError(problem)
    return key


def _check_labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    for key, value in (labels or {}).items():
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            raise ValueError(problem)
    return labels


LabelKey = Annotated[
    str,
    AfterValidator(_check_key),
    Field(
        min_length=1,
        max_length=LABEL_KEY_MAX,
        pattern=LABEL_KEY_PATTERN,
        json_schema_extra={
            "pattern": LABEL_KEY_PATTERN,
            "x-kubernetes-validations": [{
                "rule": f"!self.contains('/') || self.indexOf('/') <= {LABEL_PREFIX_MAX}",
                "message": "the label key prefix before '/' must be at most 253 characters",
            }]
        },
    ),
]
LabelValue = Annotated[str, Field(max_length=LABEL_VALUE_MAX, pattern=LABEL_VALUE_PATTERN)]
LabelMap = Annotated[dict[str, LabelValue], AfterValidator(_check_labels), Field(max_length=MAX_LABELS)]
"""Label keys and values as Kubernetes accepts them (keys checked by the models)."""
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
"""A namespace name."""


# Upper bounds keep every figure the operator derives (x 100, x replicas, / hours) inside
# Decimal's and float's range, so no value the schema accepts breaks the arithmetic.
Price = Annotated[
    Decimal,
    Field(ge=0, le=1_000_000, allow_inf_nan=False),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1000000}),
]
"""A price per unit or per node-hour, at most a million (parsed exactly as Decimal)."""
Amount = Annotated[
    Decimal,
    Field(gt=0, le=10**12, allow_inf_nan=False),
    WithJsonSchema({"type": "number", "exclusiveMinimum": True, "minimum": 0,
                    "maximum": 1000000000000}),
]
"""A budget per period: more than 0, at most 10^12."""
Ratio = Annotated[
    Decimal,
    Field(ge=Decimal("0.001"), le=1000, allow_inf_nan=False),
    WithJsonSchema({"type": "number", "minimum": 0.001, "maximum": 1000}),
]
"""A multiplier or ratio between 0.001 and 1000."""

QUANTITY_BOUNDED = r"^(([0-9]{1,9}(\.[0-9]{1,9})?)|(\.[0-9]{1,9}))(([KMGTPE]i)|[numkMGTPE])?$"
Quantity = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
    Field(pattern=QUANTITY_BOUNDED, max_length=24),
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_BOUNDED,
        "maxLength": 24,
    }),
]
"""A non-negative resource quantity such as ``250m`` or ``512Mi`` (no exponent form)."""
Duration = Annotated[
    str, Field(pattern=r"^([0-9]{1,4}(\.[0-9]{1,3})?(ms|s|m|h|d|w))+$", max_length=32)
]
"""A duration such as ``168h``, ``7d`` or ``1h30m``; small enough for datetime arithmetic."""


class SelectorRequirement(LabelSelectorRequirement):
    """One set-based requirement, checked as the apiserver checks a webhook's selector."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [{
                "rule": "self.operator in ['In', 'NotIn'] ? "
                "(has(self.values) && size(self.values) > 0) : "
                "(!has(self.values) || size(self.values) == 0)",
                "message": "values must be non-empty for operator In and NotIn and left out "
                "for Exists and DoesNotExist",
                "fieldPath": ".values",
            }]
        }
    )

    key: LabelKey
    """The label key the requirement applies to."""
    values: list[LabelValue] | None = Field(default=None, max_length=MAX_VALUES)
    """Values for In and NotIn; must be empty for Exists and DoesNotExist."""

    @model_validator(mode="after")
    def _values_fit_operator(self) -> SelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values must be non-empty for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values must be left out for operator {self.operator}")
        return self


class PolicySelector(LabelSelector):
    """A label selector the apiserver accepts as a webhook namespaceSelector."""

    match_labels: LabelMap | None = None
    """Labels that must all be present with these values."""
    match_expressions: list[SelectorRequirement] | None = Field(  # type: ignore[assignment]
        default=None, max_length=MAX_LABELS
    )
    """Set-based requirements that must all hold."""

    @model_validator(mode="before")
    @classmethod
    def _from_plain_selector(cls, data: Any) -> Any:
        """A plain LabelSelector is re-checked with this class's stricter rules."""
        if isinstance(data, LabelSelector) and not isinstance(data, cls):
            return data.model_dump(exclude_none=True)
        return data


class Scope(KopeckModel):
    """Which namespaces and workloads the policy governs."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.selector) || "
                    "(has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || "
                    "(has(self.selector.matchExpressions) && "
                    "size(self.selector.matchExpressions) > 0)",
                    "message": "scope.selector must not be empty when given: "
                    "set matchLabels or matchExpressions, or leave selector out",
                    "fieldPath": ".selector",
                }
            ]
        }
    )

    namespace_selector: PolicySelector = Field(default_factory=PolicySelector)
    """Namespaces the policy applies to; an empty selector matches every namespace."""
    selector: PolicySelector | None = None
    """Optional workload label selector; when given it must not be empty."""
    priority: int = Field(default=0, ge=0, le=1000)
    """The highest-priority matching policy wins; ties are broken by name."""


class NetworkRates(KopeckModel):
    """Price per GiB of traffic by where it goes."""

    intra_zone_per_gi_b: Price = Decimal(0)
    """Traffic within one zone (usually free)."""
    cross_zone_per_gi_b: Price = Decimal("0.01")
    """Traffic between zones of one region."""
    cross_region_per_gi_b: Price = Decimal("0.02")
    """Traffic between regions."""
    internet_per_gi_b: Price = Decimal("0.09")
    """Traffic to or from addresses outside the cluster's networks."""


class RateCard(KopeckModel):
    """Prices per unit of resource, as a cloud's on-demand list prices."""

    cpu_core_hour: Price
    """Price of one CPU core for one hour."""
    memory_gi_b_hour: Price
    """Price of one GiB of memory for one hour."""
    gpu_hour: Price = Decimal(0)
    """Price of one GPU for one hour."""
    storage_gi_b_month: Price = Decimal(0)
    """Price of one GiB of persistent volume for one month (730 hours)."""
    network: NetworkRates = Field(default_factory=NetworkRates)
    """Network prices by traffic class."""


class PriceBook(KopeckModel):
    """Whole-node prices by instance type, split into CPU and memory as OpenCost does."""

    instance_types: dict[str, Price] = Field(
        min_length=1,
        max_length=1000,
        json_schema_extra={
            "x-kubernetes-validations": [{
                "rule": f"self.all(v, {_VALUE_CEL})",
                "message": "instance types are label values: at most 63 of [A-Za-z0-9-_.], "
                "starting and ending alphanumeric",
            }]
        },
    )
    """Price per hour of a node, keyed by its node.kubernetes.io/instance-type label."""
    @field_validator("instance_types")
    @classmethod
    def _instance_types_are_label_values(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for key in value:
            problem = label_value_problem(key)
            if problem:
                raise ValueError(f"instance type: {problem}")
        return value

    default_price_per_hour: Price | None = None
    """Price per hour of a node whose instance type is not listed."""
    cpu_to_memory_cost_ratio: Ratio = Decimal(8)
    """How many GiB-hours of memory cost as much as one core-hour."""


class NodeOverride(KopeckModel):
    """Prices for the nodes that carry given labels (spot pools, reserved capacity, GPUs)."""

    node_selector: LabelMap = Field(min_length=1)
    """Labels a node must carry for this override to apply."""
    rate_card: RateCard | None = None
    """Rate card for these nodes."""
    price_per_hour: Price | None = None
    """Whole-node price per hour for these nodes, split like the price book."""


class Pricing(KopeckModel):
    """How usage turns into money: a rate card and/or a node price book."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.rateCard) || has(self.priceBook)",
                    "message": "pricing needs a rateCard, a priceBook, or both",
                }
            ]
        }
    )

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    """ISO 4217 currency code of every price in this policy."""
    rate_card: RateCard | None = None
    """Per-resource prices."""
    price_book: PriceBook | None = None
    """Per-instance-type node prices."""
    node_overrides: list[NodeOverride] | None = Field(default=None, max_length=100)
    """Per-node price overrides chosen by node labels; the first match wins."""


class Budget(KopeckModel):
    """A spending limit per period and what to do when a change would break it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.thresholds) || self.thresholds.isSorted()",
                    "message": "budget.thresholds must be in ascending order, e.g. [50, 80, 100]",
                    "fieldPath": ".thresholds",
                }
            ]
        }
    )

    amount: Amount
    """The budget for one period, in the policy's currency."""
    period: BudgetPeriod = "Monthly"
    """Daily, Weekly (from Monday 00:00 UTC) or Monthly (calendar month, UTC)."""
    thresholds: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [50, 80, 100], max_length=10
    )
    """Percentages of the budget at which an Event and condition are raised, ascending."""
    enforcement: Enforcement = "Warn"
    """Deny refuses changes that would exceed the budget; Warn admits with a warning;
    Audit admits and records an Event."""
    failure_policy: Literal["Ignore", "Fail"] = "Ignore"
    """What the apiserver does when the webhook cannot be reached."""


class Exemptions(KopeckModel):
    """Workloads that budgets and rightsizing leave alone."""

    namespaces: list[DnsLabel] | None = Field(default=None, max_length=MAX_VALUES)
    """Namespaces never enforced against nor proposed for."""
    selector: PolicySelector | None = None
    """Workloads whose labels match are exempt."""


class TimeWindow(KopeckModel):
    """A recurring window in which no change is proposed or enforced (e.g. business hours)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.start < self.end",
                    "message": "window start must be before end (HH:MM, 24h clock)",
                }
            ]
        }
    )

    name: str | None = Field(default=None, max_length=63)
    """A label for humans."""
    days: list[Weekday] = Field(default_factory=lambda: list(WORKDAYS), min_length=1)
    """Days of the week the window is open."""
    start: HHMM
    """Start time, HH:MM."""
    end: HHMM
    """End time, HH:MM (exclusive)."""
    time_zone: str = Field(
        default="UTC", max_length=64, pattern=r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$"
    )
    """IANA time zone of start and end, e.g. Europe/Berlin."""
    applies_to: list[Gate] = Field(default_factory=lambda: list(DEFAULT_GATES), min_length=1)
    """What the window suspends."""
    selector: PolicySelector | None = None
    """Only workloads matching this selector are affected; all when left out."""


class Rightsizing(KopeckModel):
    """How requests are proposed from observed usage."""

    mode: Literal["Off", "Propose"] = "Off"
    """Propose writes proposals to Allocations and admission warnings."""
    cpu_percentile: int = Field(default=95, ge=50, le=100)
    """The CPU request proposed is this percentile of observed usage."""
    memory_headroom_percent: int = Field(default=15, ge=0, le=200)
    """The memory request proposed is the peak plus this much."""
    history_window: Duration = "168h"
    """How much history the recommender considers."""
    min_samples: int = Field(default=12, ge=1, le=100000)
    """No proposal before this many reports of a container."""
    min_cpu: Quantity = "10m"
    """Smallest CPU request ever proposed."""
    min_memory: Quantity = "20Mi"
    """Smallest memory request ever proposed."""


class Anomaly(KopeckModel):
    """Spend-rate anomaly detection."""

    enabled: bool = True
    """Turn detection off for noisy, spiky namespaces."""
    sensitivity: Literal["Low", "Medium", "High"] = "Medium"
    """High flags smaller deviations from the baseline."""
    warm_up_samples: int = Field(default=12, ge=1, le=100000)
    """Reports needed before the baseline is trusted; until then the static threshold applies."""
    static_threshold_multiplier: Ratio = Decimal(5)
    """During warm-up: a spend rate this many times the budget's even rate is an anomaly."""


class CostPolicySpec(KopeckModel):
    """What the platform team wants for the namespaces in scope."""

    scope: Scope = Field(default_factory=Scope)
    """Which namespaces and workloads this policy governs."""
    pricing: Pricing
    """How usage is priced."""
    budget: Budget | None = None
    """Optional spending limit and its enforcement."""
    exemptions: Exemptions | None = None
    """Workloads neither enforced against nor proposed for."""
    windows: list[TimeWindow] | None = Field(default=None, max_length=32)
    """Recurring windows in which no change is proposed or enforced."""
    rightsizing: Rightsizing = Field(default_factory=Rightsizing)
    """Rightsizing proposals."""
    anomaly: Anomaly = Field(default_factory=Anomaly)
    """Spend-rate anomaly detection."""

    @model_validator(mode="after")
    def _selector_not_empty(self) -> CostPolicySpec:
        if self.scope.selector is not None and self.scope.selector.is_empty():
            raise ValueError("scope.selector must not be empty when given")
        return self


class Reservation(StatusModel):
    """Spend promised to an admitted change that real usage has not yet taken over."""

    key: str
    """namespace/kind/name of the workload."""
    amount: MoneyString
    """The projected spend to the end of the period reserved for it."""
    expires: Timestamp
    """When the reservation lapses if usage never shows up."""
    since: Timestamp | None = None
    """When the first admitted change of this reservation was made."""
    new_pods: int | None = Field(default=None, ge=0)
    """How many new pods the admitted changes create (added replicas; all of them when the
    pod template's requests changed): the reservation ends once that many pods of the
    workload first reported after `since`, so their own usage carries the projection."""
    changes: dict[str, MoneyString] | None = Field(default=None, max_length=32)
    """The admitted changes the amount is made of (a digest of the workload's old and new
    shape and replicas -> its amount): an admission the apiserver runs again for the same
    change (a retried patch, a retried request) is not reserved twice."""


class CostPolicyStatus(StatusModel):
    """What the operator observed for this policy's period."""

    period: str | None = None
    """The current billing period, e.g. 2026-11 or 2026-W47 or 2026-11-23."""
    period_start: Timestamp | None = None
    """Start of the current period."""
    period_end: Timestamp | None = None
    """End of the current period (exclusive)."""
    currency: str | None = None
    """Currency of the figures below."""
    spent: MoneyString | None = None
    """Money spent so far this period by workloads in scope."""
    forecast: MoneyString | None = None
    """Spend expected at the end of the period at the current run rate."""
    remaining: MoneyString | None = None
    """Budget left this period (negative when exceeded)."""
    reserved: MoneyString | None = None
    """Spend reserved by admitted changes not yet visible in usage."""
    reservations: list[Reservation] | None = None
    """The reservations that make up reserved."""
    matched_namespaces: list[str] | None = None
    """Namespaces this policy currently governs."""
    thresholds_crossed: list[int] | None = None
    """Budget thresholds already announced this period."""
    silent_nodes: list[str] | None = None
    """Nodes whose probe has not reported for three intervals."""
    conditions: list[Condition] | None = None
    """Ready, BudgetWarning, BudgetExceeded, AnomalyDetected, ProbesReporting,
    LedgerComplete (False, reason ReportsDropped, while a node-probe declared reports of a
    node this policy's workloads ran on dropped from its full buffer in this period or the
    previous one: the message names node, boot, seq ranges and period)."""
    observed_generation: int | None = None
    """The .metadata.generation this status reflects."""
