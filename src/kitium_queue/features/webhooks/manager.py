"""``WebhookManager``: the webhook feature of one queue (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from ...enums import WebhookDeliveryStrategy, WebhookEventType
from ...errors import ConfigurationError, DamagedKeyError
from ...options import to_int
from ...outbox import Outbox
from .delivery import (
    Backoff,
    EndpointBreaker,
    EndpointSlots,
    ProcessSlots,
    SecretSource,
    SecretStore,
    Sender,
    Target,
)
from .dlq import list_dead, webhook_stats
from .local import LocalDispatcher
from .lua import enqueue_fragment, event_fragment, feature_scripts, release_fragment
from .models import (
    MAX_RETRIES,
    MAX_TIMEOUT_MS,
    DeliveryRecord,
    Webhook,
    WebhookConfig,
    WebhookEvent,
    check_event_type,
    check_id,
    check_strategy,
    check_url,
    in_flight,
)
from .needs import NeedsService, synced_after_change
from .registry import Registry, checked, read_records, webhook_damage
from .secretstore import DEFAULT_SECRET_CACHE_S, DEFAULT_SECRET_TIMEOUT_S
from .service import FEATURE, GROUP, Delivery, DeliveryService
from .settings import (
    DEAD_MAX,
    DEAD_TTL_S,
    HISTORY_MAX,
    HISTORY_TTL_S,
    check_dead,
    check_history,
    check_numbers,
)
from .ssrf import AddressPolicy, BlockedAddressError, Resolver, literal_address, require_httpx
from .subscriber import WebhookSubscriber

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["JobWebhookConfig", "WebhookManager"]


#: The webhook id of deliveries to a job's own ``webhook_url``.
JOB_WEBHOOK_ID = "job"
#: Most deliveries one get_delivery_history call returns.
_MAX_HISTORY = 1000


@dataclass(frozen=True)
class JobWebhookConfig:
    """How jobs' own ``webhook_url`` endpoints are served (always guaranteed).

    ``events``: which of a job's events go to its URL (transition events only: added,
    completed, failed, dlq, retrying, stalled, removed); ``secret``: the signing secret
    (or pass it as ``secrets={"job": ...}``); ``max_retries``, ``timeout_ms`` as for a
    registered endpoint.
    """

    events: Sequence[WebhookEventType | str] = (
        WebhookEventType.JOB_COMPLETED,
        WebhookEventType.JOB_FAILED,
    )
    secret: str | None = field(default=None, repr=False)
    max_retries: int = 8
    timeout_ms: int = 10_000

    @staticmethod
    def checked(config: Any) -> JobWebhookConfig:
        """``config`` (None: the defaults) once it is a ``JobWebhookConfig`` whose
        numbers are in range (those of a registered endpoint); ``ConfigurationError``
        otherwise."""
        where = "WebhookManager job_webhook"
        if config is None:
            return JobWebhookConfig()
        if not isinstance(config, JobWebhookConfig):
            raise ConfigurationError(
                f"{where} must be a JobWebhookConfig, got {type(config).__name__}"
            )
        to_int(config.max_retries, f"{where} max_retries", minimum=0, maximum=MAX_RETRIES)
        to_int(config.timeout_ms, f"{where} timeout_ms", minimum=100, maximum=MAX_TIMEOUT_MS)
        return config


def _url_option(value: Any, section: str) -> str:
    try:
        return check_url(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{section}: webhook_url: {exc}") from None


def _parse(raw: bytes, webhook_id: str, key: str) -> Webhook:
    try:
        return Webhook.from_json(raw)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"webhook {webhook_id!r:.100}: its registration in {key} is damaged ({exc}); "
            "remove it and register it again"
        ) from None


async def _replay(run: Callable[[str, Sequence[Any]], Awaitable[Any]], wid: str, limit: int) -> int:
    """Schedule up to ``limit`` dead deliveries (of webhook ``wid``, or all: ``''``).
    Entries left in the DLQ (another webhook's, a record damaged by hand) are passed
    over by the next call, so they never stop the replay short."""
    total = passed = 0
    while total < limit:
        reply = await run("webhooks_requeue", ("dlq", wid, min(limit - total, 1000), passed))
        done, skipped, seen = (int(v) for v in reply)
        total, passed = total + done, passed + skipped
        if seen == 0:
            break
    return total


def _add_services(queue: JobQueue, needs: NeedsService) -> None:
    """Add the services every worker of the queue runs with the feature: ``needs``, and
    the outbox's housekeeping. Guaranteed events stay in the outbox until it is trimmed
    past what every group acknowledged; the workers trim it, one at a time
    (``Outbox.housekeeping``), unless this process already added such a service."""
    queue.add_service(needs)
    housekeeping = Outbox(queue).housekeeping()
    if all(s.name != housekeeping.name for s in queue.services):
        queue.add_service(housekeeping)


class WebhookManager:
    """Signed webhooks for the jobs of ``queue`` (see docs/webhooks.md).

    Args:
        queue: the queue. Construct the manager in every process of the queue
            (producers and workers), before the queue starts, like ``queue.process``.
        secrets: where this process finds endpoint secrets: a mapping ``webhook id ->
            secret or [secrets]`` or a callable ``webhook id -> [secrets]``: a plain one
            runs on a thread (it may block), an ``async def`` one is awaited. Secrets are
            never written to Redis.
        secret_cache_s / secret_timeout_s: a callable's answer is kept this long per
            webhook id (0: asked at every delivery; default 60); each call may take
            this long (default 10), else the delivery is retried.
        allow_networks: networks the SSRF guard lets through although they are not
            public (e.g. ``["10.20.0.0/16"]``; tests: ``["127.0.0.0/8"]``).
        job_webhook: how jobs' own ``webhook_url`` endpoints are served.
        backoff_ms / max_backoff_ms: retry delays, ``backoff_ms * 2**(n-1)`` capped, +-20 %.
        history_ttl_s: how long delivered (and given-up) deliveries stay in the history
            (1 s to 10 years).
        history_max: the deliveries kept per endpoint, the newest (1 to 1,000,000): a
            delivered or given-up one beyond them is deleted (pending and dead ones stay).
        dead_max / dead_ttl_s: the webhook DLQ's bound per endpoint: the newest dead
            deliveries kept (1 to 1,000,000; default 10,000), none older than this
            (1 s to 10 years; default none); None: no bound. One past it is dropped with
            its record and counted (``stats()["dead_dropped"]``).
        concurrency: requests in flight at most, per process (the HTTP pool's cost per
            request grows with it: raise it for slow endpoints). An endpoint has at most
            its ``max_in_flight`` (default: half); a quarter is kept for idle endpoints.
        busy_share: while this process's worker runs jobs, the delivery service takes
            about this share of the time and sleeps the rest (1: no pacing); an idle
            worker delivers at full speed.
        batch: outbox entries / due retries handled per step.
        claim_idle_ms: an outbox entry a dead worker held is taken over after this.
        lease_ms: a claimed retry is attempted again after this if its worker died.
        poll_ms: how soon the retry loop looks again after a step that found some due
            retries but fewer than ``batch``; with none due it sleeps until the earliest
            is due, between ``poll_ms`` and 2 s (``service.IDLE_WAIT_MS``).
        breaker_threshold / breaker_cooldown_ms: per-endpoint breaker (failures in a row;
            first pause, doubled per failed probe up to a minute).
        run_service: add the delivery service to the queue's workers (default True).
        resolver / connector: for tests: a DNS resolver stub and the network backend
            that opens connections (see ``transport.GuardedBackend``).
        default_delivery_strategy: the strategy of an endpoint registered without one
            (``guaranteed`` unless set).
    """

    #: Whether this manager may send, so needs httpx (``reading_manager``'s does not).
    _sends: ClassVar[bool] = True

    def __init__(
        self,
        queue: JobQueue,
        *,
        secrets: SecretSource | None = None,
        secret_cache_s: float = DEFAULT_SECRET_CACHE_S,
        secret_timeout_s: float = DEFAULT_SECRET_TIMEOUT_S,
        allow_networks: Iterable[str] = (),
        job_webhook: JobWebhookConfig | None = None,
        backoff_ms: int = 5_000,
        max_backoff_ms: int = 3_600_000,
        history_ttl_s: int = HISTORY_TTL_S,
        history_max: int = HISTORY_MAX,
        dead_max: int | None = DEAD_MAX,
        dead_ttl_s: int | None = DEAD_TTL_S,
        concurrency: int = 8,
        batch: int = 100,
        claim_idle_ms: int = 30_000,
        lease_ms: int = 60_000,
        poll_ms: int = 250,
        breaker_threshold: int = 5,
        breaker_cooldown_ms: int = 1_000,
        max_webhooks: int = 1_000,
        run_service: bool = True,
        busy_share: float = 0.2,
        resolver: Resolver | None = None,
        connector: Any = None,
        default_delivery_strategy: WebhookDeliveryStrategy | str = (
            WebhookDeliveryStrategy.GUARANTEED
        ),
    ) -> None:
        if self._sends:
            require_httpx()  # else every delivery failed later, in a log line only
        check_numbers(
            backoff_ms=backoff_ms,
            max_backoff_ms=max_backoff_ms,
            concurrency=concurrency,
            batch=batch,
            claim_idle_ms=claim_idle_ms,
            lease_ms=lease_ms,
            poll_ms=poll_ms,
            breaker_threshold=breaker_threshold,
            breaker_cooldown_ms=breaker_cooldown_ms,
            max_webhooks=max_webhooks,
            busy_share=busy_share,
        )
        self.history_max, self.history_ttl_s = check_history(history_max, history_ttl_s)
        self.dead_max, self.dead_ttl_s = check_dead(dead_max, dead_ttl_s)
        self.busy_share = float(busy_share)
        self.default_delivery_strategy = check_strategy(default_delivery_strategy)
        self.queue = queue
        self.job_webhook = JobWebhookConfig.checked(job_webhook)
        self.job_events = tuple(dict.fromkeys(check_event_type(e) for e in self.job_webhook.events))
        self.policy = AddressPolicy(allow_networks)
        self.secrets = SecretStore(secrets, cache_s=secret_cache_s, timeout_s=secret_timeout_s)
        if self.job_webhook.secret is not None:
            self.secrets.set(JOB_WEBHOOK_ID, self.job_webhook.secret)
        self.backoff = Backoff(backoff_ms, max_backoff_ms)
        self.batch, self.poll_ms = batch, poll_ms
        self.claim_idle_ms, self.lease_ms, self.max_webhooks = claim_idle_ms, lease_ms, max_webhooks
        self.sender = Sender(
            self.secrets,
            policy=self.policy,
            resolver=resolver,
            connector=connector,
            breaker=EndpointBreaker(breaker_threshold, breaker_cooldown_ms),
            max_connections=concurrency,
        )
        self.concurrency = concurrency
        # Per endpoint: half of them by default (WebhookConfig.max_in_flight).
        self.slots = EndpointSlots(concurrency // 2)
        self._limit: ProcessSlots | None = None
        self._limit_loop: asyncio.AbstractEventLoop | None = None
        self.registry = Registry(queue)
        self.local = LocalDispatcher(self)
        self.service = DeliveryService(self)
        self.subscriber = WebhookSubscriber(self)
        self._keys = {k: queue.keys.extra(f"wh:{k}") for k in ("retry", "dlq", "hooks")}
        self._group_ready = False
        queue.declare_option(
            "webhook_url",
            feature=FEATURE,
            normalize=_url_option,
            doc="send this job's own events to this URL (signed)",
        )
        self._install()
        queue.subscribe(self.subscriber)
        _add_services(queue, NeedsService(self))
        if run_service:
            queue.add_service(self.service)

    @staticmethod
    def of(queue: JobQueue) -> WebhookManager | None:
        """The manager already constructed on ``queue`` in this process, if any."""
        for sub in queue.hooks.subscribers:
            if isinstance(sub, WebhookSubscriber):
                return sub.mgr
        return None

    def _install(self) -> None:
        scripts = self.queue.scripts
        bounds = (self.history_max, self.dead_max, self.dead_ttl_s)
        for name, source in feature_scripts(*bounds).items():
            scripts.add_fragment(name, source)
        scripts.add_slot("enqueue", FEATURE, enqueue_fragment(self.job_events))
        scripts.add_slot(
            "release", FEATURE, release_fragment(self.job_events, self.queue.dlq.enabled)
        )
        scripts.add_slot("event", FEATURE, event_fragment())

    @property
    def limit(self) -> ProcessSlots:
        """Requests in flight in this process (one per event loop the manager runs on)."""
        loop = asyncio.get_running_loop()
        if self._limit is None or self._limit_loop is not loop:
            self._limit, self._limit_loop = ProcessSlots(self.concurrency), loop
        return self._limit

    # ------------------------------------------------------------------ targets
    def target_of(self, hook: Webhook) -> Target:
        return Target(
            hook.id, hook.url, hook.headers, hook.timeout_ms, hook.id, hook.max_in_flight or 0
        )

    def job_target(self, url: str) -> Target | None:
        try:
            check_url(url)
        except ConfigurationError:
            return None
        return Target(JOB_WEBHOOK_ID, url, {}, self.job_webhook.timeout_ms, JOB_WEBHOOK_ID)

    def _check_literal(self, url: str) -> None:
        host = literal_address(urlsplit(url).hostname or "")
        if host is None:
            return  # a name: checked on its resolved addresses at each connection
        why = self.policy.refusal(host)
        if why:
            raise BlockedAddressError(
                f"webhook URL refused by the SSRF guard: {why}; allow "
                "the network with allow_networks=[...] if intended"
            )

    # ------------------------------------------------------------------ secrets
    def set_secret(self, webhook_id: str, secret: str | Sequence[str]) -> None:
        """Sign ``webhook_id``'s requests with ``secret`` (several: all of them) in this
        process. Never stored in Redis."""
        self.secrets.set(webhook_id, secret)

    def rotate_secret(
        self, webhook_id: str, new_secret: str, *, keep_old_s: float = 86_400
    ) -> None:
        """Sign with ``new_secret`` from now on and with the old secret(s) as well for
        ``keep_old_s`` seconds (0 to a year), so receivers can switch (this process)."""
        self.secrets.rotate(webhook_id, new_secret, keep_old_s)

    # ------------------------------------------------------------------ registrations
    async def _put(self, hook: Webhook | None, webhook_id: str) -> bool:
        body = hook.to_json() if hook else b""
        args = (webhook_id, body, self.max_webhooks, self.history_ttl_s)
        existed = await self._run("webhooks_put", args)
        if hook:
            self.registry.put(hook)
        else:
            self.registry.drop(webhook_id)
        await synced_after_change(self)  # workers without the feature hand jobs over
        return bool(existed)

    async def _run(self, script: str, args: Sequence[Any]) -> Any:
        """``ctx.run``: a damaged webhook key comes out named, with its repair."""
        try:
            return await self.queue.ctx.run(script, args)
        except DamagedKeyError as exc:
            raise webhook_damage(exc) from exc

    async def _ensure_group(self) -> None:
        if not self._group_ready:
            await Outbox(self.queue).create_group(GROUP, "0")
            self._group_ready = True

    async def register_webhook(self, config: WebhookConfig) -> Webhook:
        """Register an endpoint (``WebhookConfig``); its ``secret``, if given, is kept in
        this process. Raises ConfigurationError for a bad config, an existing id, or a
        literal address the SSRF guard refuses."""
        hook = Webhook.from_config(config, int(time.time() * 1000), self.default_delivery_strategy)
        if hook.id == JOB_WEBHOOK_ID:
            raise ConfigurationError(f"webhook id {JOB_WEBHOOK_ID!r} is reserved")
        self._check_literal(hook.url)

        async def action() -> Webhook:
            await self._ensure_group()
            if await self._hook(hook.id) is not None:
                raise ConfigurationError(f"webhook {hook.id!r} exists; use update_webhook")
            if config.secret is not None:
                self.secrets.set(hook.id, config.secret)
            await self._put(hook, hook.id)
            return hook

        return await self.queue.admin.execute(
            "register_webhook",
            {"id": hook.id, "events": list(hook.events)},
            action,
            shown=lambda h: h.id,
        )

    async def list_webhooks(self) -> list[Webhook]:
        """Every registered endpoint (from Redis)."""
        await self.queue.queries.check("list_webhooks", {})
        await self.registry.refresh(force=True)
        return sorted(self.registry.hooks.values(), key=lambda h: (h.created_at, h.id))

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        """The endpoint ``webhook_id`` (from Redis), or None."""
        await self.queue.queries.check("get_webhook", {"id": webhook_id})
        return await self._hook(webhook_id)

    async def _hook(self, webhook_id: str) -> Webhook | None:
        client = await self.queue.client()
        key = self._keys["hooks"]
        raw = await checked(client, key, "hash", client.hget(key, webhook_id))
        return None if raw is None else _parse(raw, webhook_id, key)

    async def update_webhook(self, webhook_id: str, **changes: Any) -> Webhook:
        """Change fields of an endpoint (``url``, ``events``, ``delivery_strategy``,
        ``max_retries``, ``active``, ``timeout_ms``, ``headers``, ``description``)."""

        async def action() -> Webhook:
            old = await self._hook(webhook_id)
            if old is None:
                raise ConfigurationError(f"no webhook {webhook_id!r}")
            new = old.updated(changes, int(time.time() * 1000))
            self._check_literal(new.url)
            await self._put(new, webhook_id)
            return new

        return await self.queue.admin.execute(
            "update_webhook",
            {"id": webhook_id, "fields": sorted(changes)},
            action,
            shown=lambda h: h.id,
        )

    async def remove_webhook(self, webhook_id: str) -> bool:
        """Remove an endpoint; its pending retries are dropped when they come due (their
        history, and its index, stay until they expire: ``history_ttl_s``). True if it
        existed."""

        async def action() -> bool:
            return await self._put(None, webhook_id)

        return await self.queue.admin.execute("remove_webhook", {"id": webhook_id}, action)

    # ------------------------------------------------------------------ events
    async def send_event(self, event: WebhookEvent) -> str:
        """Send an application event to every active endpoint subscribed to its type;
        returns its id. Guaranteed endpoints get it through the outbox (durable once this
        returns); the others from this process's memory."""
        eid, etype, body = event.body()
        await self.registry.refresh()
        if self.registry.wanting(etype, guaranteed=True):
            await self._ensure_group()
            await Outbox(self.queue).add("webhook", {"i": eid, "e": etype, "b": body})
        for hook in self.registry.wanting(etype, guaranteed=False):
            self.local.submit(
                Delivery(
                    f"{hook.id}/{eid}",
                    self.target_of(hook),
                    etype,
                    body,
                    hook.delivery_strategy.value,
                    hook.max_retries,
                )
            )
        return eid

    # ------------------------------------------------------------------ deliveries
    def _member(self, webhook_id: str, event_id: str) -> str:
        if webhook_id != JOB_WEBHOOK_ID:
            check_id(webhook_id, "webhook id")
        return f"{webhook_id}/{check_id(event_id, 'event id')}"

    async def retry_delivery(self, webhook_id: str, event_id: str) -> bool:
        """Attempt the delivery of ``event_id`` to ``webhook_id`` again now: a dead or
        failed one with its full retry budget again, a delivered one once more (sent
        again on purpose), a pending one now instead of after its backoff. False when no
        such delivery is recorded (its record expired, or went past ``history_max``).
        Raises ``DeliveryInFlightError`` while a delivery worker is attempting it (a
        claimed retry, under its lease): it would go out twice."""
        member = self._member(webhook_id, event_id)

        async def action() -> bool:
            got = await self._run("webhooks_requeue", ("one", member, 1, 0))
            if len(got) > 3 and got[3] in (b"leased", "leased"):
                raise in_flight(member, int(got[4]))
            if int(got[0]):
                self.sender.breaker.success(webhook_id)  # an operator says: try it now
            return bool(int(got[0]))

        return await self.queue.admin.execute(
            "retry_delivery", {"webhook_id": webhook_id, "event_id": event_id}, action
        )

    async def get_delivery_history(
        self, webhook_id: str, event_id: str | None = None, *, limit: int = 50
    ) -> list[DeliveryRecord]:
        """The delivery of ``event_id`` to ``webhook_id`` (a list of one, or empty), or
        the latest ``limit`` deliveries to ``webhook_id``, newest first. Kept: the newest
        ``history_max`` per endpoint, for ``history_ttl_s``; pending and dead ones."""
        await self.queue.queries.check(
            "get_delivery_history", {"webhook_id": webhook_id, "event_id": event_id, "limit": limit}
        )
        client = await self.queue.client()
        if event_id is not None:
            return await self._records([self._member(webhook_id, event_id).encode()])
        if webhook_id != JOB_WEBHOOK_ID:
            check_id(webhook_id, "webhook id")
        limit = to_int(limit, "limit", minimum=1, maximum=_MAX_HISTORY)
        key = self.queue.keys.extra(f"wh:idx:{webhook_id}")
        ids = await checked(client, key, "zset", client.zrevrange(key, 0, limit - 1))
        return await self._records([webhook_id.encode() + b"/" + i for i in ids])

    async def _records(self, members: Sequence[bytes]) -> list[DeliveryRecord]:
        client = await self.queue.client()
        return await read_records(client, self.queue.keys.extra("wh:d:").encode(), members)

    async def list_dlq(
        self, limit: int = 100, webhook_id: str | None = None, *, offset: int = 0
    ) -> list[DeliveryRecord]:
        """Dead-lettered deliveries, oldest first (of one endpoint, or all), from the
        ``offset``-th on (a page: up to ``limit``, 1 to 10,000)."""
        return await list_dead(self, limit, webhook_id, offset)

    async def replay_dlq(self, limit: int = 1000, webhook_id: str | None = None) -> int:
        """Schedule dead-lettered deliveries (of one endpoint, or all) for an attempt now,
        each with its full retry budget again; returns how many."""
        limit = to_int(limit, "limit", minimum=0, maximum=2**53)
        if webhook_id is not None and webhook_id != JOB_WEBHOOK_ID:
            check_id(webhook_id, "webhook id")
        for wid in [webhook_id] if webhook_id else [*self.registry.hooks, JOB_WEBHOOK_ID]:
            self.sender.breaker.success(wid)  # an operator says: try them now

        async def action() -> int:
            return await _replay(self._run, webhook_id or "", limit)

        return await self.queue.admin.execute(
            "replay_webhook_dlq", {"limit": limit, "webhook_id": webhook_id}, action
        )

    async def stats(self) -> dict[str, Any]:
        """Endpoints, retries scheduled, DLQ size, dead deliveries its bound dropped
        (``dead_dropped``; None for a key damaged by hand, named in ``damaged`` with the
        scripts' reports), the outbox group's backlog, this process's in-memory
        deliveries."""
        return await webhook_stats(self)

    def event_types(self) -> list[str]:
        """The event names of ``WebhookEventType``."""
        return [e.value for e in WebhookEventType]


class _ReadingManager(WebhookManager):
    _sends = False


def reading_manager(queue: JobQueue) -> WebhookManager:
    """A manager of ``queue`` that only reads what Redis holds (registrations, delivery
    records, counts), so it needs no httpx: ``kitium-queue webhooks list`` and the other
    commands that read. It adds no delivery service; asked to send a request, it fails
    naming the ``webhooks`` extra (``Sender.client``)."""
    return _ReadingManager(queue, run_service=False)
