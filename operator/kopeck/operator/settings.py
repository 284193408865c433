"""Operator settings: one dataclass, filled from CLI flags with env fallbacks and sane defaults.

Every flag has a KOPECK_* environment variable of the same name (``--ingest-port`` ->
KOPECK_INGEST_PORT), so a Deployment can configure the operator without arguments.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass
class Settings:
    """Everything the operator can be told."""

    kubeconfig: str | None = None
    namespace: str = "kopeck-system"
    """Where node idle records and the operator's own Events live."""
    bind: str = "127.0.0.1"
    """Address the ingest and webhook servers listen on (127.0.0.1 for the local cluster)."""
    advertise_host: str | None = None
    """Host name/IP the apiserver uses to reach the webhook; defaults to bind."""
    ingest_port: int = 8443
    webhook_port: int = 9443
    health_port: int = 8080
    """Plain HTTP /healthz and /metrics (0 disables)."""
    cert_dir: Path | None = None
    """tls.crt/tls.key/ca.crt to serve; generated (self-signed CA) into this folder when absent."""
    probe_service_accounts: str = "kopeck-system:kopeck-node-probe"
    """Comma-separated namespace:name of ServiceAccounts whose tokens may post reports."""
    token_cache_seconds: float = 30.0
    """Seconds a reviewed good token is trusted again (never past the token's expiry)."""
    probe_audience: str = "kopeck-ingest"
    """Audience of the probes' projected tokens (TokenReview spec.audiences); empty accepts
    tokens for the apiserver's own audience (not recommended)."""
    require_node_binding: bool = True
    """Refuse tokens not bound to a Pod, and reports for another node than the token's."""
    token_review_rate: float = 5.0
    """TokenReviews of unknown tokens per second (token bucket; 429 beyond)."""
    token_review_burst: float = 20.0
    """Burst of TokenReviews of unknown tokens allowed at once."""
    checkpoint_interval: float = 0.5
    """Batching delay of status checkpoints; a report is acknowledged once checkpointed."""
    probe_interval: float = 5.0
    """The probes' push interval; a node silent for 3 intervals is flagged."""
    status_interval: float = 5.0
    """How often CostPolicy status and the audit sweep run."""
    idle_after: float = 3600.0
    """Seconds under 5% of CPU request before a workload gets the Idle condition."""
    share_idle: bool = False
    """Spread node idle cost over the node's pods instead of showing it apart."""
    reservation_ttl: float = 3600.0
    """Seconds an admission reservation lasts if the workload never reports usage."""
    close_grace: float = 60.0
    """Seconds after a period's end before its records are frozen (late reports)."""
    webhook: bool = True
    webhook_config: str = "kopeck.cost.kopeck.io"
    """Name of the ValidatingWebhookConfiguration the operator manages."""
    webhook_timeout: int = 5
    webhook_client_ca: Path | None = None
    """PEM CA bundle that signed the apiserver's webhook client certificate: with it the
    webhook requires that certificate (mutual TLS) and refuses every other caller; unset,
    anyone who can reach the port can call the webhook (a warning is logged)."""
    webhook_service: str | None = None
    """namespace/name:port of a Service in front of the webhook; the configuration then names
    that Service (the apiserver resolves it itself) instead of a URL."""
    peering: str | None = None
    """kopf peering name for HA (two replicas, one active); None runs standalone."""
    priority: int | None = None
    """Peering priority; default a random one so two replicas never tie."""
    peering_lifetime: int = 15
    """Seconds a silent peer is considered alive (failover time after a crash)."""
    pod_name: str | None = None
    """This replica's Pod (downward API, env KOPECK_POD_NAME): the leader labels its Pod
    cost.kopeck.io/leader=true so that the ingest and webhook Services route to it only."""
    pod_namespace: str | None = None
    """The namespace of pod_name (env KOPECK_POD_NAMESPACE); defaults to --namespace."""
    prometheus_url: str | None = None
    """When set, rightsizing history comes from Prometheus instead of the histograms."""
    prometheus_step: float = 60.0
    """Seconds of usage per history sample read from Prometheus (the range-query step);
    a policy's minSamples counts these samples."""
    prometheus_refresh: float = 300.0
    """Seconds a workload's Prometheus history is reused before it is read again."""
    verbose: bool = False

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One --flag per field, defaulting to KOPECK_<FIELD> from the environment."""
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            env = "KOPECK_" + f.name.upper()
            default = getattr(cls(), f.name)
            raw = os.environ.get(env)
            if f.type in ("bool", bool):
                on = raw.lower() in ("1", "true", "yes") if raw is not None else bool(default)
                parser.add_argument(
                    flag, dest=f.name, action=argparse.BooleanOptionalAction, default=on,
                    help=f"(env {env}, default {on})",
                )
                continue
            kind = _parser_type(str(f.type))
            parser.add_argument(
                flag, dest=f.name, type=kind,
                default=kind(raw) if raw is not None else default,
                help=f"(env {env}, default {default})",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The settings parsed by `add_arguments`."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def webhook_service_ref(self) -> dict[str, object] | None:
        """The Service reference for the webhook client config, or None for a URL."""
        if not self.webhook_service:
            return None
        ns, slash, rest = self.webhook_service.partition("/")
        name, colon, port = rest.partition(":")
        if not (slash and ns and name and (not colon or port.isdigit())):
            raise ValueError(
                f"--webhook-service {self.webhook_service!r}: expected namespace/name[:port], "
                "e.g. kopeck-system/kopeck-operator:9443"
            )
        return {"namespace": ns, "name": name, "port": int(port) if port else 443}

    @property
    def probe_accounts(self) -> set[str]:
        """Usernames TokenReview returns for the allowed probe accounts."""
        out = set()
        for item in self.probe_service_accounts.split(","):
            item = item.strip()
            if item:
                ns, _, name = item.partition(":")
                out.add(f"system:serviceaccount:{ns}:{name}")
        return out


def _parser_type(name: str) -> type:
    if "int" in name:
        return int
    if "float" in name:
        return float
    if "Path" in name:
        return Path
    return str
