"""kopeck_probe.ebpf."""
