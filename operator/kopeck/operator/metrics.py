"""Prometheus metrics of the operator and the plain-HTTP /healthz and /metrics endpoint."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry()
REPORTS = Counter(
    "kopeck_reports_total", "Probe reports by outcome", ["result"], registry=REGISTRY
)
NODE_COST = Counter(
    "kopeck_node_cost", "Node cost folded from reports, and how much of it pods were charged"
    " for compute (the rest is idle): conservation is checked against Allocations",
    ["node", "currency", "part"], registry=REGISTRY,
)
INGEST_SECONDS = Histogram(
    "kopeck_ingest_seconds", "Time from receiving a report to its acknowledgement",
    registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
ADMISSIONS = Counter(
    "kopeck_admissions_total", "Admission reviews by verdict", ["verdict"], registry=REGISTRY
)
ADMISSION_SECONDS = Histogram(
    "kopeck_admission_seconds", "Time to answer one AdmissionReview inside the operator",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
ANOMALIES = Counter(
    "kopeck_spend_anomalies_total", "Spend-rate anomalies detected", ["scope"],
    registry=REGISTRY,
)
ANOMALOUS = Gauge(
    "kopeck_spend_anomalous", "1 while a namespace or workload spends anomalously",
    ["policy", "subject"], registry=REGISTRY,
)
SPENT = Gauge("kopeck_policy_spent", "Spend this period", ["policy", "currency"],
              registry=REGISTRY)
FORECAST = Gauge("kopeck_policy_forecast", "Forecast spend at period end",
                 ["policy", "currency"], registry=REGISTRY)
BUDGET = Gauge("kopeck_policy_budget", "Budget amount", ["policy", "currency"],
               registry=REGISTRY)
ACTIVE = Gauge("kopeck_operator_active", "1 when this replica leads", registry=REGISTRY)
TLS_HANDSHAKES = Gauge(
    "kopeck_webhook_tls_handshakes", "TLS handshakes the webhook server accepted (by kind)",
    ["kind"], registry=REGISTRY,
)


async def serve_health(host: str, port: int, state: Any) -> web.AppRunner:
    """Start /healthz (200 while the loop runs; says active or standby) and /metrics."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "active": bool(state.active), "ready": bool(state.ready)}
        )

    async def metrics(_: web.Request) -> web.Response:
        ACTIVE.set(1 if state.active else 0)
        ctx = getattr(state, "webhook_ssl", None)
        if ctx is not None:  # new connections vs resumed sessions, to explain tail latency
            stats = ctx.session_stats()
            TLS_HANDSHAKES.labels("accepted").set(stats.get("accept_good", 0))
            TLS_HANDSHAKES.labels("resumed").set(stats.get("hits", 0))
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/metrics", metrics)])
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
