"""Who may post a probe report, and for which node: TokenReview with kopeck's audience.

A report is accepted only with a projected ServiceAccount token of an allowed probe account,
issued for kopeck's own audience (``--probe-audience``) and bound to a Pod; the node in the
token (``authentication.kubernetes.io/node-name``) must be the report's node, so a probe can
speak for its own node only. Reviews of unknown tokens are rate-limited (token bucket);
answers are cached by token hash, a good one never past the token's own expiry. The reviewer
has its own connection pool, so a flood of tokens cannot starve the ledger writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass

from kopeck.operator.kube import Kube
from kopeck.operator.state import State

NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
NEGATIVE_TTL_SECONDS = 5.0
MAX_CACHE = 10_000


@dataclass(frozen=True)
class Probe:
    """An authenticated probe: its account and the node its token is bound to."""

    username: str
    node: str | None


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: HTTP status, the metric outcome and a reason for the client."""

    status: int
    outcome: str
    reason: str
    retry_after: int | None = None


class TokenBucket:
    """At most `rate` events per second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def token_expiry(token: str) -> float | None:
    """The `exp` claim (unix seconds) of a JWT, unverified: read only after TokenReview."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (IndexError, ValueError, AttributeError):
        return None


class ProbeAuthenticator:
    """TokenReview of probe tokens with kopeck's audience; cached, rate-limited, node-bound."""

    def __init__(self, state: State, kube: Kube | None = None) -> None:
        self.state = state
        s = state.settings
        self._cache: dict[str, tuple[float, Probe | Refusal]] = {}
        self._bucket = TokenBucket(s.token_review_rate, s.token_review_burst)
        self._kube: Kube | None = kube
        self.reviews = 0

    def kube(self) -> Kube:
        """A client of its own (own connection pool), sharing the operator's credentials."""
        if self._kube is None:
            self._kube = Kube(self.state.kube.creds, max_connections=4)
        return self._kube

    async def close(self) -> None:
        """Close the reviewer's connections."""
        if self._kube is not None:
            await self._kube.close()

    async def authenticate(self, token: str) -> Probe | Refusal:
        """The probe a token proves, or why not. ApiError/TimeoutError/OSError: retry later."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        if not self._bucket.take():
            return Refusal(429, "throttled", "too many unknown tokens to review; retry later",
                           retry_after=1)
        self.reviews += 1
        verdict = await self._review(token)
        ttl = NEGATIVE_TTL_SECONDS
        if isinstance(verdict, Probe):
            ttl = self.state.settings.token_cache_seconds
            exp = token_expiry(token)
            if exp is not None:
                ttl = min(ttl, exp - time.time())
        if len(self._cache) > MAX_CACHE:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        if ttl > 0:
            self._cache[digest] = (now + ttl, verdict)
        return verdict

    async def _review(self, token: str) -> Probe | Refusal:
        s = self.state.settings
        spec: dict[str, object] = {"token": token}
        if s.probe_audience:
            spec["audiences"] = [s.probe_audience]
        review = await self.kube().create(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
        )
        status = review.get("status") or {}
        user = status.get("user") or {}
        username = user.get("username")
        if not status.get("authenticated") or not username:
            hint = f" for audience {s.probe_audience}" if s.probe_audience else ""
            return Refusal(401, "unauthorized", f"the token is not valid{hint}")
        if s.probe_audience and s.probe_audience not in (status.get("audiences") or []):
            return Refusal(401, "unauthorized",
                           f"the token is not issued for audience {s.probe_audience}")
        if username not in s.probe_accounts:
            return Refusal(403, "forbidden", f"{username} may not post probe reports")
        nodes = (user.get("extra") or {}).get(NODE_NAME_KEY) or []
        node = nodes[0] if len(nodes) == 1 else None
        if s.require_node_binding and node is None:
            return Refusal(403, "forbidden",
                           f"the token of {username} is not bound to a Pod on a node; mount a "
                           "projected ServiceAccount token (audience "
                           f"{s.probe_audience or 'of the apiserver'}) in the probe's Pod")
        return Probe(username=username, node=node)

    def node_refusal(self, probe: Probe, node: str) -> Refusal | None:
        """None when the probe may report for this node."""
        if not self.state.settings.require_node_binding or probe.node == node:
            return None
        return Refusal(403, "forbidden",
                       f"the token of {probe.username} is bound to node {probe.node}; "
                       f"it may not post a report for node {node}")
