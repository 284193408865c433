"""Final records against the real apiserver: once a period's record is final its money,
usage and folded reports cannot change (the CRD rule refuses it, whoever writes), and late
usage lands in the period's adjustment record, which a restarted operator finds again."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal
from typing import Any

from kopeck.accounting.periods import period_at
from kopeck.localcluster.handle import ClusterHandle
from kopeck.operator.allocations import Checkpointer, restore
from kopeck.operator.fold import fold_report
from tests.support.ledger import body, replica


def allocations(cluster: ClusterHandle, namespace: str) -> dict[str, dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "allocations", "-n", namespace, "-o", "json")
                       .stdout)["items"]
    return {a["metadata"]["name"]: a for a in items}


def test_a_final_record_never_changes_and_late_usage_is_an_adjustment(
    cluster: ClusterHandle, namespace: str
) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    period = period_at("Monthly", start).name
    name = f"deployment-web-{period}"

    async def main() -> None:
        state = replica(cluster, namespace)
        ck = Checkpointer(state)
        try:
            fold_report(state, body(namespace, 1, start), start)
            assert await ck.flush(ck.bump())
            for akey, acc in state.accs.items():  # what close_ended does after the grace
                acc.closed = acc.final = True
                state.dirty.add(akey)
            assert await ck.flush(ck.bump())
            final = allocations(cluster, namespace)[name]
            assert final["status"]["final"] is True

            for patch, why in (
                ({"status": {"cost": {"total": "0"}}}, "cost"),
                ({"status": {"final": False}}, "final"),
                ({"status": {"folded": {"n1/b": "1-9"}}}, "folded"),
            ):
                out = cluster.kubectl("patch", "allocation", name, "-n", namespace,
                                      "--subresource=status", "--type=merge",
                                      "-p", json.dumps(patch), check=False)
                assert out.returncode != 0, f"a final record's {why} was changed"
                assert "this Allocation is final" in out.stderr, out.stderr

            late = fold_report(state, body(namespace, 2, start), start + dt.timedelta(days=40))
            assert late.late > 0
            assert await ck.flush(ck.bump())
            stored = allocations(cluster, namespace)
            assert stored[name]["status"] == final["status"]
            adj = stored[f"{name}-adjustment"]
            assert adj["spec"]["adjustment"] is True
            assert adj["spec"]["period"]["name"] == period
            assert adj["metadata"]["labels"]["cost.kopeck.io/adjustment"] == "true"
            assert Decimal(str(adj["status"]["usage"]["cpuCoreSeconds"])) == 1
            assert adj["status"]["folded"] == {"n1/b": "2"}
        finally:
            await state.kube.close()

        # a restarted operator finds both records; the late report's resend is a duplicate
        fresh = replica(cluster, namespace)
        try:
            await restore(fresh)
            again = fold_report(fresh, body(namespace, 2, start), start + dt.timedelta(days=40))
            assert again.duplicate and not again.touched
            restored = [a for a in fresh.accs.values()
                        if a.key.namespace == namespace and a.key.kind == "Deployment"]
            assert sorted((a.record, a.final, a.adjustment) for a in restored) == [
                (period, True, False), (f"{period}-adjustment", False, True)]
        finally:
            await fresh.kube.close()

    asyncio.run(main())
