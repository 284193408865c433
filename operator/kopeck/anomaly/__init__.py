"""Spend-rate anomaly detection: pluggable detectors and a per-series monitor (pure)."""

from kopeck.anomaly.detectors import (
    DETECTORS,
    K_BY_SENSITIVITY,
    Anomaly,
    BaselineDetector,
    Detection,
    Detector,
    DetectorSettings,
    EwmaMadDetector,
    EwmaMadSettings,
    RateSample,
    RollingMedianDetector,
    RollingMedianSettings,
    make_detector,
    register,
)
from kopeck.anomaly.monitor import SpendMonitor, even_rate_per_hour, spend_rate_per_hour

__all__ = [
    "DETECTORS",
    "K_BY_SENSITIVITY",
    "Anomaly",
    "BaselineDetector",
    "Detection",
    "Detector",
    "DetectorSettings",
    "EwmaMadDetector",
    "EwmaMadSettings",
    "RateSample",
    "RollingMedianDetector",
    "RollingMedianSettings",
    "SpendMonitor",
    "even_rate_per_hour",
    "make_detector",
    "register",
    "spend_rate_per_hour",
]
