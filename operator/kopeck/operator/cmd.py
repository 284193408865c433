"""`kopeck operator`: run the operator — watches, ingest, status, audit, admission webhook.

kopf runs the watches and the admission handlers; next to it, in the same event loop, run
the HTTPS ingest endpoint, the checkpointer, the status writer, the audit sweep and the
webhook registration. With --peering two replicas share the work as kopf peers: one
active, the other on standby until the active one goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import random
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import kopf

from kopeck.operator.settings import Settings

log = logging.getLogger("kopeck.operator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kopeck operator` (each also read from KOPECK_<NAME>)."""
    Settings.add_arguments(parser)


def _denials_are_not_errors(record: logging.LogRecord) -> bool:
    """kopf logs a denied admission as a failed handler (ERROR); for us it is the policy
    working, so it is logged as INFO under kopeck.webhook instead."""
    message = record.getMessage()
    if "failed permanently: kopeck:" in message:
        logging.getLogger("kopeck.webhook").info("denied: %s", message.split(": ", 1)[1])
        return False
    return True


async def supervised(
    name: str, factory: Callable[[], Awaitable[Any]], *, backoff: float = 1.0
) -> None:
    """Run a background loop for the life of the operator: a loop that dies of any fault
    (a dropped apiserver connection) is logged and started again, never silently gone."""
    while True:
        try:
            await factory()
            log.error("background task %s ended; starting it again", name)
        except Exception:
            log.exception("background task %s failed; starting it again", name)
        await asyncio.sleep(backoff)


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM."""
    settings = Settings.from_args(args)
    try:
        settings.webhook_service_ref()
    except ValueError as exc:
        print(f"kopeck operator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kopf.objects", "aiohttp.access", "kopf._core.reactor.observation"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").addFilter(_denials_are_not_errors)
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(settings))
    return 0


async def main(settings: Settings) -> None:
    """Start everything and run kopf until it stops."""
    from kopeck.operator import (  # noqa: F401  (the imports register kopf handlers)
        costpolicies,
        namespaces,
        nodes,
        pods,
        webhook,
    )
    from kopeck.operator.allocations import Checkpointer, prime, restore
    from kopeck.operator.anomalies import AnomalyBook
    from kopeck.operator.audit import status_loop, sweep_loop
    from kopeck.operator.ingest import Ingest, announce
    from kopeck.operator.kube import Credentials, Kube
    from kopeck.operator.leader import ensure_peering, follow, label_own_pod
    from kopeck.operator.metrics import serve_health
    from kopeck.operator.state import State
    from kopeck.operator.tls import ensure_serving_cert
    from kopeck.operator.workloads import OwnerResolver

    creds = Credentials.load(settings.kubeconfig)
    kube = Kube(creds)

    @kopf.on.login()
    def login(**_: Any) -> kopf.ConnectionInfo:
        """kopf uses the same credentials as our own client (the kubeconfig we were given)."""
        return kopf.ConnectionInfo(
            server=creds.server, ca_path=creds.ca_file, insecure=creds.insecure,
            certificate_path=creds.cert_file, private_key_path=creds.key_file,
            token=creds.current_token(), scheme="Bearer" if creds.token else None,
        )

    state = State(settings=settings, kube=kube, resolver=OwnerResolver(kube))
    state.anomaly = AnomalyBook()
    state.active = not settings.peering  # a peer is on standby until the peering says otherwise
    cert_dir = settings.cert_dir or Path(tempfile.mkdtemp(prefix="kopeck-operator-tls-"))
    host = settings.advertise_host or settings.bind
    cert = ensure_serving_cert(cert_dir, [host, settings.bind, "localhost", "127.0.0.1"])
    log.info("serving certificate in %s (CA: %s)", cert_dir, cert.ca_file)

    status_wake = asyncio.Event()
    hook_wake = asyncio.Event()

    def kick() -> None:
        status_wake.set()
        hook_wake.set()

    checkpointer = Checkpointer(state)
    state.flush_soon = checkpointer.bump

    async def on_hits(hits: list[Any]) -> None:
        await announce(state, hits, kick)

    ingest = Ingest(state, checkpointer, on_hits=on_hits)
    await ingest.serve(settings.bind, settings.ingest_port, cert.server_context())
    log.info("ingest on https://%s:%d/v1/reports", host, settings.ingest_port)
    if settings.health_port:
        await serve_health(settings.bind, settings.health_port, state)

    identity = f"kopeck-{socket.gethostname()}-{os.getpid()}"
    priority = settings.priority if settings.priority is not None else random.randint(1, 10**6)
    tasks: list[asyncio.Task[Any]] = []

    async def on_change(active: bool) -> None:
        if active:  # the previous leader checkpointed everything it acknowledged
            state.accs.clear()
            state.seen.clear()
            state.histories.clear()
            state.dirty.clear()
            count = await restore(state)
            await prime(state)
            log.info("restored %d allocations; caches primed", count)
        state.active = active
        if settings.pod_name:
            await label_own_pod(kube, settings.pod_namespace or settings.namespace,
                                settings.pod_name, active)
        kick()

    if settings.peering:
        await ensure_peering(kube, settings.peering)
        peering = settings.peering
        tasks.append(asyncio.create_task(supervised(
            "leader", lambda: follow(kube, peering, identity, priority, on_change)
        )))
    else:
        log.info("restored %d allocations", await restore(state))
        await prime(state)
        if settings.pod_name:
            await label_own_pod(kube, settings.pod_namespace or settings.namespace,
                                settings.pod_name, True)
    sweep_every = max(10.0, settings.status_interval * 6)
    tasks.append(asyncio.create_task(supervised("checkpointer", checkpointer.run)))
    tasks.append(asyncio.create_task(
        supervised("status", lambda: status_loop(state, status_wake))
    ))
    tasks.append(asyncio.create_task(
        supervised("sweep", lambda: sweep_loop(state, kick, sweep_every))
    ))

    ks = kopf.OperatorSettings()
    ks.posting.level = logging.WARNING
    ks.peering.lifetime = settings.peering_lifetime
    ks.watching.server_timeout = 300
    ks.networking.request_timeout = 60
    if settings.webhook:
        from kopeck.operator.webhook import PolicyRoutingWebhookServer, manage_configuration

        webhook.register()
        if settings.webhook_client_ca is None:
            log.warning(
                "--webhook-client-ca is not set: anyone who can reach port %d can call the "
                "admission webhook (reserve or release budget); set it to the CA of the "
                "apiserver's webhook client certificate", settings.webhook_port,
            )
        state.webhook_ssl = cert.server_context(client_ca=settings.webhook_client_ca)
        ks.admission.server = PolicyRoutingWebhookServer(
            addr=settings.bind, port=settings.webhook_port, host=host,
            context=state.webhook_ssl, certfile=str(cert.cert_file),
            pkeyfile=str(cert.key_file), cafile=str(cert.ca_file),
        )
        ks.admission.managed = None  # we manage it: one webhook per policy
        ca_bundle = base64.b64encode(cert.ca_pem).decode()
        url = f"https://{host}:{settings.webhook_port}"
        tasks.append(asyncio.create_task(supervised(
            "webhook-config", lambda: manage_configuration(state, url, ca_bundle, hook_wake)
        )))
    memo = kopf.Memo(state=state, kick=kick)
    try:
        await kopf.operator(
            clusterwide=True,
            settings=ks,
            memo=memo,
            standalone=not settings.peering,
            peering_name=settings.peering,
            priority=priority,
            # kopf types this with its private Identity NewType, a plain str at runtime
            identity=cast(Any, identity),
        )
    finally:
        for task in tasks:
            task.cancel()
        await ingest.reviewer.close()
        await kube.close()


def _main() -> int:
    """`python -m kopeck.operator.cmd`: the same as `kopeck operator`, without the router
    (tests and the demo start the operator this way, independent of other sub-commands)."""
    parser = argparse.ArgumentParser(prog="kopeck operator", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    import sys

    sys.exit(_main())
