"""Two writers of one Allocation (a leader handoff: the old leader's checkpointer still
flushing after the new leader restored the ledger) against the real apiserver: a write made
from a stale copy is refused, never lets the last writer win, and the report it carried is
not acknowledged, so its resend lands in the new leader's record."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from kopeck.localcluster.handle import ClusterHandle
from kopeck.operator.allocations import Checkpointer, restore
from kopeck.operator.fold import fold_report
from kopeck.operator.ingest import Ingest
from kopeck.operator.kube import JSON, Kube
from kopeck.operator.probe_auth import Probe
from tests.support.ledger import body, replica


def stored_cpu(cluster: ClusterHandle, namespace: str) -> Decimal:
    items = json.loads(cluster.kubectl("get", "allocations", "-n", namespace, "-o", "json")
                       .stdout)["items"]
    (alloc,) = [a for a in items if a["spec"]["workloadRef"]["kind"] == "Deployment"]
    return Decimal(str(alloc["status"]["usage"]["cpuCoreSeconds"]))


def test_a_stale_writer_never_overwrites_the_new_leaders_record(
    cluster: ClusterHandle, namespace: str
) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)

    async def main() -> None:
        old, new = replica(cluster, namespace), replica(cluster, namespace)
        old_ck, new_ck = Checkpointer(old), Checkpointer(new)
        try:
            fold_report(old, body(namespace, 1, start), start)
            assert await old_ck.flush(old_ck.bump())
            await restore(new)  # the handoff: the new leader loads what is stored
            fold_report(new, body(namespace, 2, start), start)
            assert await new_ck.flush(new_ck.bump())
            assert stored_cpu(cluster, namespace) == 2
            # the old leader, not yet aware, folds a report and flushes its stale copy
            fold_report(old, body(namespace, 3, start), start)
            assert not await old_ck.flush(old_ck.bump()), "a stale copy was written"
            assert stored_cpu(cluster, namespace) == 2, "the last writer won"
            # seq 3 was not acknowledged: the probe resends it to the new leader
            fold_report(new, body(namespace, 3, start), start)
            assert await new_ck.flush(new_ck.bump())
            assert stored_cpu(cluster, namespace) == 3
            # the old replica's copy (reloaded before seq 3 was written) is stale again: a
            # report it folds is refused again, and its resend lands on the fresh copy
            fold_report(old, body(namespace, 4, start), start)
            assert not await old_ck.flush(old_ck.bump())
            assert stored_cpu(cluster, namespace) == 3
            fold_report(old, body(namespace, 4, start), start)
            assert await old_ck.flush(old_ck.bump())
            assert stored_cpu(cluster, namespace) == 4
        finally:
            await old.kube.close()
            await new.kube.close()

    asyncio.run(main())


class AnswerLostKube(Kube):
    """The real apiserver, but the answer to one status write is lost after it was applied
    (a connection cut between the write and its response)."""

    lose_next = False

    async def merge_patch(self, path: str, body: JSON) -> JSON:
        answer = await super().merge_patch(path, body)
        if self.lose_next and path.endswith("/status"):
            self.lose_next = False
            raise aiohttp.ServerDisconnectedError()
        return answer


def test_a_write_whose_answer_was_lost_is_durable_once_reloaded(
    cluster: ClusterHandle, namespace: str
) -> None:
    """The write is stored but this replica never hears so; its next write conflicts, the
    record is reloaded — and holds the report. The probe's resend must then be acked
    (it was refused with 503 for ever: the reload made the first fold look never durable)."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)

    async def main() -> None:
        state = replica(cluster, namespace)
        kube = AnswerLostKube(state.kube.creds)
        state.kube = kube
        checkpointer = Checkpointer(state)
        task = asyncio.create_task(checkpointer.run())
        ingest = Ingest(state, checkpointer)

        async def authenticate(token: str) -> Probe:
            return Probe(username="system:serviceaccount:ops:probe", node="n1")

        ingest.reviewer.authenticate = authenticate  # type: ignore[method-assign]
        client = TestClient(TestServer(ingest.app()))
        await client.start_server()

        async def post(seq: int) -> int:
            wire = body(namespace, seq, start).model_dump(mode="json", by_alias=True)
            resp = await client.post("/v1/reports", json=wire,
                                     headers={"Authorization": "Bearer t"})
            return resp.status

        try:
            assert await post(1) == 200
            kube.lose_next = True
            assert await post(2) == 503  # stored, but the answer never came
            assert await post(3) in (200, 503)  # its write conflicts: the record reloads
            for _ in range(5):  # the probe resends what it holds until acked
                if await post(2) == 200 and await post(3) == 200:
                    break
                await asyncio.sleep(0.5)
            else:
                raise AssertionError("the resends were never acknowledged")
            assert stored_cpu(cluster, namespace) == 3
        finally:
            await client.close()
            task.cancel()
            await kube.close()

    asyncio.run(main())
