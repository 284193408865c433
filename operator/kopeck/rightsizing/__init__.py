"""Rightsizing: usage histograms, pluggable recommenders, savings, admission warnings, gates.

Pure apart from ``kopeck.rightsizing.prometheus`` (the only module that does I/O).
"""

from kopeck.rightsizing.admission import WorkloadName, admission_warnings, should_warn
from kopeck.rightsizing.gates import GateDecision, gate, policy_gate, window_open
from kopeck.rightsizing.history import ContainerHistory, WorkloadHistory
from kopeck.rightsizing.proposal import ProposalResult, Resources, monthly_savings, propose
from kopeck.rightsizing.strategies import (
    STRATEGIES,
    PercentileSettings,
    PercentileStrategy,
    Recommendation,
    Strategy,
    StrategySettings,
    make_strategy,
    register,
)

__all__ = [
    "STRATEGIES",
    "ContainerHistory",
    "GateDecision",
    "PercentileSettings",
    "PercentileStrategy",
    "ProposalResult",
    "Recommendation",
    "Resources",
    "Strategy",
    "StrategySettings",
    "WorkloadHistory",
    "WorkloadName",
    "admission_warnings",
    "gate",
    "make_strategy",
    "monthly_savings",
    "policy_gate",
    "propose",
    "register",
    "should_warn",
    "window_open",
]
