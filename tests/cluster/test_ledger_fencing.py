"""Two writers of one Allocation (a leader handoff: the old leader's checkpointer still
flushing after the new leader restored the ledger) against the real apiserver: a write made
from a stale copy is refused, never lets the last writer win, and the report it carried is
not acknowledged, so its resend lands in the new leader's record."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal

from kopeck.localcluster.handle import ClusterHandle
from kopeck.operator.allocations import Checkpointer, restore
from kopeck.operator.fold import fold_report
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
