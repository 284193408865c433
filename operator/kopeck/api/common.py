"""Shared building blocks of kopeck's API: camelCase models, money, quantities, conditions.

Every custom resource and the probe report are built from these, so that the CRD schemas
(generated from the models) and the code that reads objects agree field for field.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "cost.kopeck.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$"
MONEY_STRING_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"

Price = Annotated[
    Decimal,
    Field(ge=0),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
"""A price a user writes in a spec (a YAML number). Parsed exactly as Decimal."""

PositiveDecimal = Annotated[
    Decimal,
    Field(gt=0),
    WithJsonSchema({"type": "number", "exclusiveMinimum": True, "minimum": 0}),
]
"""A strictly positive number written in a spec (budget amount, ratio), parsed as Decimal."""

MoneyString = Annotated[
    Decimal,
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": MONEY_STRING_PATTERN}),
]
"""Money the operator writes in a status: a decimal string, so no float ever rounds it."""

Quantity = Annotated[
    str,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]
"""A Kubernetes resource quantity such as ``250m`` or ``512Mi``."""

Duration = Annotated[str, Field(pattern=DURATION_PATTERN)]
"""A duration such as ``168h``, ``7d`` or ``90m``."""

Timestamp = Annotated[
    dt.datetime,
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class KopeckModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        ser_json_inf_nan="constants",
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-compatible camelCase dict the apiserver stores (None fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(KopeckModel):
    """Status models tolerate fields written by newer operator versions."""

    model_config = ConfigDict(extra="ignore")


class LabelSelectorRequirement(KopeckModel):
    """One set-based requirement of a label selector, as in core Kubernetes."""

    key: str = Field(min_length=1)
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[str] | None = None
    """Values for In and NotIn; must be empty for Exists and DoesNotExist."""


class LabelSelector(KopeckModel):
    """A Kubernetes label selector: matchLabels and matchExpressions are ANDed."""

    match_labels: dict[str, str] | None = None
    """Labels that must all be present with these values."""
    match_expressions: list[LabelSelectorRequirement] | None = None
    """Set-based requirements that must all hold."""

    def is_empty(self) -> bool:
        """An empty selector matches everything, which is rarely what a user meant."""
        return not self.match_labels and not self.match_expressions


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """A condition per the Kubernetes API conventions."""

    type: str
    """CamelCase condition type, e.g. Ready or BudgetExceeded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str
    """A CamelCase machine-readable reason for the last transition."""
    message: str = ""
    """A human-readable explanation."""
    last_transition_time: Timestamp
    """When the status last changed."""
    observed_generation: int | None = None
    """The .metadata.generation the condition was computed from."""


class ObjectRef(KopeckModel):
    """A reference to a Kubernetes object."""

    api_version: str
    """API version of the referent, e.g. apps/v1."""
    kind: str
    """Kind of the referent, e.g. Deployment."""
    name: str
    """Name of the referent."""
    namespace: str | None = None
    """Namespace of the referent, for namespaced kinds."""
    uid: str | None = None
    """UID of the referent when known."""
