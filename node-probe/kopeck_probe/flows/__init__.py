"""kopeck_probe.flows."""
