"""The probe's settings, validated once at start so a bad flag fails with a clear message."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
SA_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")


class ProbeConfig(BaseModel):
    """Settings of one node-probe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_name: str = Field(min_length=1)
    """This node's name (the DaemonSet passes spec.nodeName)."""
    cgroup_base: Path = Path("/sys/fs/cgroup")
    """Where cgroup hierarchies are mounted."""
    prefix: str = ""
    """Parent under each hierarchy root holding kubepods(.slice); '' on a real node."""
    sample_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often cgroups are read (bounds what a short-lived pod can lose)."""
    report_interval_s: float = Field(default=5.0, ge=1, le=3600)
    """How often a report is cut and pushed when no threshold is crossed."""
    limits_every_cycles: int = Field(default=10, ge=1)
    """Re-read cgroup limits every this many cycles (new pods are read at once)."""
    ingest_url: str | None = None
    """The operator's ingest endpoint (https://.../v1/reports); None = buffer only."""
    token_path: Path | None = SA_TOKEN
    """Bearer token file sent with each report (the ServiceAccount token)."""
    ca_file: Path | None = None
    """CA bundle to verify the operator's certificate (default: system store)."""
    wal_path: Path = Path("/var/lib/kopeck/probe.db")
    """SQLite write-ahead buffer of unacknowledged reports."""
    wal_max_reports: int = Field(default=17_280, ge=1)
    """Buffer bound (default: one day at 5 s); overflow drops the oldest and records a Gap."""
    metrics_port: int | None = Field(default=9102, ge=0, le=65535)
    """Port of /metrics (None: do not serve)."""
    metrics_addr: str = "0.0.0.0"
    """Address /metrics listens on."""
    high_fraction: float = Field(default=0.9, gt=0, le=1)
    """Push at once when CPU or memory goes above this fraction of the limit."""
    idle_fraction: float = Field(default=0.05, ge=0, lt=1)
    """Push at once when CPU and memory both go below this fraction of the request."""
    watch_pods: bool = True
    """Watch this node's Pods on the API server for names and requests."""
    kubeconfig: str | None = None
    """Kubeconfig for the watch (default: in-cluster, then ~/.kube/config)."""

    @model_validator(mode="after")
    def _intervals(self) -> ProbeConfig:
        if self.sample_interval_s > self.report_interval_s:
            raise ValueError(
                f"sample interval {self.sample_interval_s}s is longer than the report "
                f"interval {self.report_interval_s}s: lower --sample-interval"
            )
        return self
