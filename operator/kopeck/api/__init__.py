"""kopeck's API: the custom resources' spec and status, and the probe report schema."""

from kopeck.api.allocation import AllocationSpec, AllocationStatus
from kopeck.api.common import API_VERSION, GROUP, VERSION, Condition, LabelSelector, ObjectRef
from kopeck.api.costpolicy import CostPolicySpec, CostPolicyStatus
from kopeck.api.report import ProbeReport, ReportAck

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "AllocationSpec",
    "AllocationStatus",
    "Condition",
    "CostPolicySpec",
    "CostPolicyStatus",
    "LabelSelector",
    "ObjectRef",
    "ProbeReport",
    "ReportAck",
]
