"""Background tasks outlive a dropped apiserver connection (they restart, never end silently)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from kopeck.operator.kube import Credentials, Kube
from kopeck.operator.leader import follow


class DroppingKube(Kube):
    """The first GET of the peering object loses its connection; later ones answer."""

    def __init__(self) -> None:
        super().__init__(Credentials("https://127.0.0.1:1", None))
        self.calls = 0

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            raise aiohttp.ServerDisconnectedError()
        return {"status": {"me": {"priority": 5, "lifetime": 60,
                                  "lastseen": "2999-01-01T00:00:00+00:00"}}}


def test_leader_follow_survives_a_dropped_connection() -> None:
    async def main() -> list[bool]:
        changes: list[bool] = []

        async def on_change(active: bool) -> None:
            changes.append(active)

        task = asyncio.create_task(follow(DroppingKube(), "p", "me", 5, on_change, 0.01))
        for _ in range(200):
            if True in changes or task.done():
                break
            await asyncio.sleep(0.01)
        done = task.done()
        task.cancel()
        assert not done, task.exception()
        return changes

    assert asyncio.run(main())[-1] is True


def test_a_background_task_that_dies_is_restarted() -> None:
    from kopeck.operator.cmd import supervised

    async def main() -> int:
        runs = 0
        again = asyncio.Event()

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                raise aiohttp.ClientPayloadError("cut")
            again.set()
            await asyncio.sleep(3600)

        task = asyncio.create_task(supervised("flaky", flaky, backoff=0.01))
        await asyncio.wait_for(again.wait(), 5)
        task.cancel()
        return runs

    assert asyncio.run(main()) == 2
