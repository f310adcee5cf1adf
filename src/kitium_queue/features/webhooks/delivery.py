"""One delivery attempt: sign, POST through the SSRF guard, classify the answer.

``Sender`` owns the pooled httpx client (one per process and queue), the endpoints'
secrets (in memory only: ``secretstore.SecretStore``) and the per-endpoint breakers. It
never logs a secret, a request or response body, or a URL's path and query (only the
host).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...limits import clip, get_logger
from .models import url_host
from .secretstore import SecretSource, SecretSourceError, SecretStore
from .signing import signature_header
from .ssrf import (
    UNRESOLVED,
    AddressPolicy,
    BlockedAddressError,
    Resolver,
    require_httpx,
)

__all__ = [
    "AttemptResult",
    "Backoff",
    "EndpointBreaker",
    "EndpointSlots",
    "ProcessSlots",
    "SecretSource",
    "SecretSourceError",
    "SecretStore",
    "Sender",
    "Target",
]

log = get_logger(__name__)

#: Most bytes of a response body read (and then discarded: bodies are never stored).
MAX_RESPONSE_BYTES = 4096
USER_AGENT = "kitium-queue-webhooks/1"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``n`` (1-based): ``base_ms * 2**(n-1)``, at most ``max_ms``,
    with +-20 % jitter so a recovering endpoint is not hit by every retry at once."""

    base_ms: int = 5_000
    max_ms: int = 3_600_000

    def delay_ms(self, n: int) -> int:
        raw = min(self.base_ms * (2 ** min(max(n - 1, 0), 40)), self.max_ms)
        return max(1, int(raw * random.uniform(0.8, 1.2)))


class EndpointBreaker:
    """Per-endpoint health in this process: after ``threshold`` failures in a row the
    endpoint is *open* for ``cooldown_ms`` (doubling on each failed probe, up to
    ``max_cooldown_ms``); while open, attempts fail at once without a request. Then one
    probe goes through: a success closes it."""

    def __init__(
        self, threshold: int = 5, cooldown_ms: int = 1000, max_cooldown_ms: int = 60_000
    ) -> None:
        self.threshold, self.cooldown_ms, self.max_cooldown_ms = (
            threshold,
            cooldown_ms,
            max_cooldown_ms,
        )
        self._fails: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._cooldown: dict[str, int] = {}
        self._probing: set[str] = set()

    def allow(self, key: str) -> bool:
        until = self._open_until.get(key)
        if until is None:
            return True
        if time.monotonic() < until or key in self._probing:
            return False
        self._probing.add(key)  # half-open: this one attempt is the probe
        return True

    def success(self, key: str) -> None:
        """Close ``key``'s breaker; ``job`` (a replay, a retry): every job URL host's."""
        if key == "job":
            for k in [k for k in self._fails.keys() | self._open_until.keys() if k[:4] == "job:"]:
                self.success(k)
        self._fails.pop(key, None)
        self._open_until.pop(key, None)
        self._cooldown.pop(key, None)
        self._probing.discard(key)

    def failure(self, key: str) -> None:
        probing = key in self._probing
        self._probing.discard(key)
        n = self._fails.get(key, 0) + 1
        self._fails[key] = n
        if probing:  # the probe failed: open again, for twice as long
            cd = min(self._cooldown.get(key, self.cooldown_ms) * 2, self.max_cooldown_ms)
        elif n >= self.threshold and key not in self._open_until:
            cd = self.cooldown_ms
        else:  # closed below the threshold, or a request sent before it opened
            return
        self._cooldown[key] = cd
        self._open_until[key] = time.monotonic() + cd / 1000

    def is_open(self, key: str) -> bool:
        return key in self._open_until

    def reopens_in_ms(self, key: str) -> int:
        """How long until ``key`` lets a probe through (0: now)."""
        until = self._open_until.get(key)
        return 0 if until is None else max(0, int((until - time.monotonic()) * 1000))


@dataclass(frozen=True, slots=True)
class Target:
    """Where one delivery goes: the endpoint id (``job`` for a job's own URL), its URL,
    extra headers, timeout, and the key its breaker and secrets are found under."""

    webhook_id: str
    url: str
    headers: Mapping[str, str]
    timeout_ms: int
    secret_id: str
    max_in_flight: int = 0  # requests in flight at once; 0: the manager's default

    @property
    def breaker_key(self) -> str:
        return self.webhook_id if self.webhook_id != "job" else "job:" + url_host(self.url)


#: Most endpoints whose slots are remembered while none of them is in use.
MAX_SLOT_KEYS = 10_000


class _Slots:
    __slots__ = ("loop", "sem", "size", "users")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.size, self.loop, self.sem, self.users = size, loop, asyncio.Semaphore(size), 0


class EndpointSlots:
    """Requests in flight per endpoint in this process (``Target.max_in_flight``, else
    ``default``), under the breaker's key (a webhook id; ``job:<host>`` for jobs' own
    URLs). Taken before one of the process's ``concurrency`` slots, so a delivery that
    waits for its endpoint holds none of them: an endpoint that hangs holds at most its
    cap while the others are delivered. A waiting delivery is not failed.

    ``hold`` yields whether the slot was taken: False only with ``wait_s``, once that
    long has passed without one (the caller then does not send)."""

    def __init__(self, default: int) -> None:
        self.default = max(1, default)
        self._slots: dict[str, _Slots] = {}

    @contextlib.asynccontextmanager
    async def hold(self, target: Target | None, wait_s: float | None = None) -> AsyncIterator[bool]:
        if target is None:  # nothing is sent
            yield True
            return
        key, size = target.breaker_key, target.max_in_flight or self.default
        loop = asyncio.get_running_loop()
        slot = self._slots.get(key)
        if slot is None or slot.size != size or slot.loop is not loop:
            # A changed cap takes effect for the next requests (those holding the old
            # one end as they are).
            if len(self._slots) >= MAX_SLOT_KEYS:
                self._slots = {k: v for k, v in self._slots.items() if v.users}
            slot = self._slots[key] = _Slots(size, loop)
        slot.users += 1
        try:
            try:
                await asyncio.wait_for(slot.sem.acquire(), wait_s)
            except asyncio.TimeoutError:
                yield False
                return
            try:
                yield True
            finally:
                slot.sem.release()
        finally:
            slot.users -= 1


class ProcessSlots:
    """The process's ``concurrency`` request slots, of which ``reserve`` (a quarter) are
    kept for endpoints with no request in flight: an endpoint that has one takes another
    only while more than ``reserve`` are free. Per-endpoint caps alone (half each) let
    two endpoints that hang hold every slot, and every other endpoint wait for their
    timeouts (up to 120 s); now it takes endpoints hanging at once beyond the reserve,
    one request each, and their breakers soon cut each to one probe. Waiters are served
    in order, among those the free slots allow. One per event loop (``WebhookManager.limit``).
    """

    def __init__(self, size: int) -> None:
        self.size, self.reserve = size, size // 4
        self.free = size
        self._by_key: dict[str, int] = {}
        self._waiters: list[tuple[asyncio.Future[None], str]] = []

    def _may(self, key: str) -> bool:
        return self.free > (self.reserve if self._by_key.get(key) else 0)

    def _take(self, key: str) -> None:
        self.free -= 1
        self._by_key[key] = self._by_key.get(key, 0) + 1

    def _give(self, key: str) -> None:
        self.free += 1
        n = self._by_key.get(key, 0) - 1
        if n > 0:
            self._by_key[key] = n
        else:
            self._by_key.pop(key, None)
        self._grant()

    def _grant(self) -> None:
        for entry in list(self._waiters):  # the earliest first, as the free slots allow
            fut, k = entry
            if fut.done():
                self._waiters.remove(entry)
            elif self._may(k):
                self._waiters.remove(entry)
                self._take(k)
                fut.set_result(None)

    @contextlib.asynccontextmanager
    async def hold(self, target: Target | None) -> AsyncIterator[None]:
        key = "" if target is None else target.breaker_key
        if not self._waiters and self._may(key):
            self._take(key)
        else:  # behind the earlier waiters, unless they wait for more than is free
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (fut, key)
            self._waiters.append(entry)
            self._grant()
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._give(key)  # granted as it was cancelled: handed on
                elif entry in self._waiters:
                    self._waiters.remove(entry)
                raise
        try:
            yield
        finally:
            self._give(key)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """``ok``; ``status`` (None: no response); ``error`` (short, no body, no secret);
    ``permanent``: retrying cannot help (refused by the SSRF guard, no secret);
    ``sent``: a request went out (False: refused or breaker open); ``wait_ms``: do not
    try again before this (the endpoint's breaker is open that much longer)."""

    ok: bool
    status: int | None
    error: str | None
    duration_ms: int
    permanent: bool = False
    sent: bool = True
    wait_ms: int = 0


class Sender:
    """Signs and sends; see the module docstring."""

    def __init__(
        self,
        secrets: SecretStore,
        *,
        policy: AddressPolicy,
        resolver: Resolver | None = None,
        connector: Any = None,
        breaker: EndpointBreaker | None = None,
        max_connections: int = 100,
    ) -> None:
        self.secrets = secrets
        self.policy = policy
        self.resolver = resolver
        self.connector = connector
        self.breaker = breaker or EndpointBreaker()
        self.max_connections = max_connections
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0

    def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is not loop:
            self._client = None  # its connections belong to a loop that is gone
        if self._client is None:
            self._client_loop = loop
            require_httpx()
            import httpx

            from .transport import GuardedTransport

            transport = GuardedTransport(
                self.policy,
                resolver=self.resolver,
                inner=self.connector,
                max_connections=self.max_connections,
            )
            self._client = httpx.AsyncClient(
                transport=transport, follow_redirects=False, trust_env=False
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def attempt(self, target: Target, event_id: str, body: bytes) -> AttemptResult:
        """One signed POST of ``body`` to ``target``."""
        import httpx

        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        try:  # off the event loop for a blocking source (secretstore.py)
            keys = await self.secrets.fetch(target.secret_id)
        except SecretSourceError as exc:  # the application's source (a vault): retried,
            # a malformed secret too (a source mid-rotation may answer one briefly)
            return AttemptResult(False, None, f"{exc}: not sent", took(), False, False)
        except Exception as exc:  # a mapping source that failed: retried, its type only
            why = f"the secrets source raised {type(exc).__name__} for webhook"
            return AttemptResult(
                False, None, f"{why} {target.secret_id!r}: not sent", took(), False, False
            )
        if not keys:
            return AttemptResult(
                False,
                None,
                f"no signing secret for webhook "
                f"{target.secret_id!r} in this process (pass secrets= to "
                "WebhookManager)",
                0,
                False,
                False,
            )
        bkey = target.breaker_key
        if not self.breaker.allow(bkey):
            return AttemptResult(
                False,
                None,
                "endpoint circuit open after repeated failures: not sent",
                0,
                False,
                False,
                max(self.breaker.reopens_in_ms(bkey), 1),
            )
        ts = int(time.time())
        headers = dict(target.headers)
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": event_id,
                "webhook-timestamp": str(ts),
                "webhook-signature": signature_header(keys, event_id, ts, body),
            }
        )
        timeout = target.timeout_ms / 1000

        async def post() -> int:
            async with self.client().stream(
                "POST", target.url, content=body, headers=headers, timeout=timeout
            ) as resp:
                read = 0
                async for chunk in resp.aiter_raw():  # drained, bounded, discarded
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES:
                        break
                return int(resp.status_code)

        try:
            # httpx's timeout is per phase (connect, each read...): bound the whole request
            # too, so an endpoint that drips its answer cannot hold a delivery for long.
            status = await asyncio.wait_for(post(), timeout)
        except asyncio.TimeoutError:
            self.breaker.failure(bkey)
            return AttemptResult(False, None, f"timed out after {target.timeout_ms} ms", took())
        except BlockedAddressError as exc:
            self.breaker.success(bkey)  # not the endpoint's health: leave it closed
            return AttemptResult(False, None, str(exc), took(), True, False)
        except httpx.TimeoutException:
            self.breaker.failure(bkey)
            return AttemptResult(False, None, f"timed out after {target.timeout_ms} ms", took())
        except (httpx.HTTPError, OSError) as exc:
            self.breaker.failure(bkey)
            text = str(exc)
            why = (
                clip(text, 300)
                if text.startswith(UNRESOLVED)
                else f"{type(exc).__name__} connecting to {url_host(target.url)}"
            )
            return AttemptResult(False, None, why, took())
        except Exception as exc:  # any other: this attempt failed, not the whole batch
            self.breaker.failure(bkey)
            return AttemptResult(
                False, None, f"{type(exc).__name__} sending to {url_host(target.url)}", took()
            )
        self.sent += 1
        if 200 <= status < 300:
            self.breaker.success(bkey)
            return AttemptResult(True, status, None, took())
        self.breaker.failure(bkey)
        if 300 <= status < 400:
            return AttemptResult(
                False, status, f"HTTP {status}: redirects are not followed", took()
            )
        return AttemptResult(False, status, f"HTTP {status}", took())


def history_json(previous: Iterable[list[Any]], new: list[Any], keep: int = 20) -> bytes:
    """The stored attempt list: the previous ones and ``new``, the last ``keep``."""
    import orjson

    items = [*previous, new][-keep:]
    return orjson.dumps(items)
