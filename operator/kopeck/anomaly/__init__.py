"""kopeck.anomaly."""
