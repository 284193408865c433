"""kopeck node-probe: per-pod usage from cgroups, eBPF and flow records."""
