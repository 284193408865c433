"""A small asyncio client for the apiserver: the few verbs the operator needs, on aiohttp.

kopf owns watching; this client does the rest (status writes, TokenReviews, optimistic
concurrency on the policy status) without blocking the event loop on a synchronous client.
Credentials come from the kubeconfig (client certificate or token) or the in-cluster
service account, loaded once through the `kubernetes` package.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

JSON = dict[str, Any]
MERGE = "application/merge-patch+json"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5, sock_read=5)
"""A healthy apiserver answers kopeck's small reads and writes in milliseconds; a connection
silent for 5 s is dead (a load balancer or NAT entry that went away without a reset), and
waiting out the whole 30 s would hold an ack past the probe's 10 s push timeout."""


class ApiError(Exception):
    """The apiserver answered with an error status."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        reason = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{what}: HTTP {status}: {reason}")
        self.status = status
        self.body = body

    @property
    def conflict(self) -> bool:
        """409: a resourceVersion precondition failed or the object already exists."""
        return self.status == 409

    @property
    def not_found(self) -> bool:
        """404."""
        return self.status == 404


@dataclass(frozen=True)
class Credentials:
    """Where the apiserver is and how to prove who we are."""

    server: str
    ca_file: str | None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    insecure: bool = False
    token_file: str | None = None
    """Where a rotating token lives (in-cluster projected ServiceAccount token)."""

    @classmethod
    def load(cls, kubeconfig: str | None = None) -> Credentials:
        """From the kubeconfig (or KUBECONFIG), else from the in-cluster service account."""
        from kubernetes import client, config

        cfg = client.Configuration()
        token_file = None
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        except Exception:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            token_file = IN_CLUSTER_TOKEN
        return cls(
            server=cfg.host.rstrip("/"),
            ca_file=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            token=bearer_token(cfg.api_key or {}),
            insecure=not cfg.verify_ssl,
            token_file=token_file,
        )

    def current_token(self) -> str | None:
        """The token to send now: re-read from the token file when there is one."""
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    return f.read().strip() or self.token
            except OSError:
                return self.token
        return self.token

    def ssl_context(self) -> ssl.SSLContext:
        """TLS to the apiserver, verifying its certificate against the configured CA."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def resource_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
    subresource: str | None = None,
) -> str:
    """/api/v1/... or /apis/group/version/... for a resource, object or subresource."""
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = root
    if namespace:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def bearer_token(api_key: dict[str, str]) -> str | None:
    """The bearer token the kubernetes client loaded (its key differs between loaders and
    versions: 'authorization' or 'BearerToken', with or without the 'Bearer ' prefix)."""
    for key in ("authorization", "BearerToken"):
        value = api_key.get(key)
        if value:
            value = value.strip()
            return value[7:].strip() if value.lower().startswith("bearer ") else value
    return None


class Kube:
    """One aiohttp session to the apiserver, shared by every coroutine of the operator."""

    def __init__(self, creds: Credentials, *, max_connections: int = 32) -> None:
        self.creds = creds
        self._ssl = creds.ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._max = max_connections
        self._cached_token: str | None = creds.token
        self._token_at: float | None = None

    async def session(self) -> aiohttp.ClientSession:
        """The shared session, created in the running loop on first use."""
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json", "User-Agent": "kopeck-operator"}
            self._session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._max),
                timeout=REQUEST_TIMEOUT,
            )
        return self._session

    def _token(self) -> str | None:
        """The bearer token, re-read from a rotating token file at most once a minute."""
        now = time.monotonic()
        if self._token_at is None or now - self._token_at > 60:
            self._cached_token = self.creds.current_token()
            self._token_at = now
        return self._cached_token

    async def close(self) -> None:
        """Close the session (end of the operator)."""
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, *, body: Any = None, content_type: str | None = None,
        params: dict[str, str] | None = None,
    ) -> JSON:
        """One call; JSON in and out; ApiError on any non-2xx answer."""
        session = await self.session()
        url = self.creds.server + path + (f"?{urlencode(params)}" if params else "")
        headers = {}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = content_type or "application/json"
        for attempt in range(10):
            async with session.request(method, url, data=data, headers=headers) as resp:
                text = await resp.text()
                try:
                    payload: Any = json.loads(text) if text else {}
                except json.JSONDecodeError:
                    payload = text
                if resp.status == 429 and attempt < 9:  # not processed: wait as told, retry
                    delay = float(resp.headers.get("Retry-After", "0.5") or 0.5)
                    await asyncio.sleep(min(delay, 2.0))
                    continue
                if resp.status >= 400:
                    raise ApiError(resp.status, payload, f"{method} {path}")
                return payload if isinstance(payload, dict) else {}
        raise ApiError(429, {}, f"{method} {path}")  # pragma: no cover

    async def get(self, path: str, params: dict[str, str] | None = None) -> JSON:
        """GET an object or list."""
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> JSON | None:
        """GET an object, None when it does not exist."""
        try:
            return await self.get(path)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def create(self, path: str, body: JSON) -> JSON:
        """POST a new object to a collection path."""
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: JSON) -> JSON:
        """JSON merge patch; include metadata.resourceVersion for optimistic concurrency."""
        return await self.request("PATCH", path, body=body, content_type=MERGE)

    async def delete(self, path: str) -> None:
        """DELETE, ignoring objects already gone."""
        try:
            await self.request("DELETE", path)
        except ApiError as exc:
            if not exc.not_found:
                raise


async def retry_conflicts(coro_fn: Any, attempts: int = 20) -> Any:
    """Run an optimistic-concurrency step until it does not conflict (bounded)."""
    for i in range(attempts):
        try:
            return await coro_fn()
        except ApiError as exc:
            if not exc.conflict or i == attempts - 1:
                raise
            await asyncio.sleep(0.005 * (i + 1))
    return None  # pragma: no cover
