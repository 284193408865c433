"""ProbeAuthenticator without an apiserver: audience, node binding, rate limit, cache expiry."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from types import SimpleNamespace
from typing import Any

from kopeck.operator.probe_auth import (
    NODE_NAME_KEY,
    Probe,
    ProbeAuthenticator,
    Refusal,
    token_expiry,
)
from kopeck.operator.settings import Settings

USER = "system:serviceaccount:ns:probe"


def jwt(exp: float) -> str:
    body = base64.urlsafe_b64encode(json.dumps({"exp": int(exp)}).encode()).decode().rstrip("=")
    return f"h.{body}.s"


class FakeKube:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.bodies: list[dict[str, Any]] = []

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        return self.answer


def authenticator(answer: dict[str, Any], **settings: Any) -> tuple[ProbeAuthenticator, FakeKube]:
    s = Settings(probe_service_accounts="ns:probe", **settings)
    auth = ProbeAuthenticator(SimpleNamespace(settings=s, kube=None))  # type: ignore[arg-type]
    fake = FakeKube(answer)
    auth._kube = fake  # type: ignore[assignment]
    return auth, fake


def good(node: str | None = "n1", audiences: tuple[str, ...] = ("kopeck-ingest",)) -> dict[str, Any]:
    extra = {NODE_NAME_KEY: [node]} if node else {}
    return {"status": {"authenticated": True, "audiences": list(audiences),
                       "user": {"username": USER, "extra": extra}}}


def test_review_asks_for_kopecks_audience_and_binds_the_node() -> None:
    auth, fake = authenticator(good())
    probe = asyncio.run(auth.authenticate(jwt(time.time() + 600)))
    assert probe == Probe(USER, "n1")
    assert fake.bodies[0]["spec"]["audiences"] == ["kopeck-ingest"]
    assert auth.node_refusal(probe, "n1") is None
    refusal = auth.node_refusal(probe, "n2")
    assert refusal is not None and refusal.status == 403 and "n1" in refusal.reason


def test_wrong_audience_and_unbound_tokens_are_refused() -> None:
    auth, _ = authenticator(good(audiences=("https://kubernetes.default.svc",)))
    r = asyncio.run(auth.authenticate("t"))
    assert isinstance(r, Refusal) and r.status == 401
    auth, _ = authenticator(good(node=None))
    r = asyncio.run(auth.authenticate("t"))
    assert isinstance(r, Refusal) and r.status == 403 and "not bound" in r.reason


def test_unknown_tokens_are_rate_limited_and_good_ones_cached() -> None:
    auth, fake = authenticator({"status": {"authenticated": False}},
                               token_review_rate=0.001, token_review_burst=2)
    results = [asyncio.run(auth.authenticate(f"bad-{i}")) for i in range(3)]
    assert [r.status for r in results if isinstance(r, Refusal)] == [401, 401, 429]
    assert len(fake.bodies) == 2
    auth, fake = authenticator(good())
    token = jwt(time.time() + 600)
    for _ in range(3):
        asyncio.run(auth.authenticate(token))
    assert len(fake.bodies) == 1


def test_a_good_token_is_not_cached_past_its_expiry() -> None:
    auth, fake = authenticator(good())
    token = jwt(time.time() - 1)
    asyncio.run(auth.authenticate(token))
    asyncio.run(auth.authenticate(token))
    assert len(fake.bodies) == 2
    assert token_expiry("not-a-jwt") is None
