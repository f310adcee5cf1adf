"""Endpoint secrets in this process: ``SecretStore`` (see docs/webhooks.md, "Secrets").

A callable source (your vault or configuration) is asked from the delivery path only
(``SecretStore.fetch``), never on the event loop: a plain callable runs on threads of
its own (``SECRET_THREADS``), an ``async def`` one (or a callable returning an
awaitable) is awaited. Each look-up is bounded (``timeout_s``); its answer is kept for
``cache_s`` seconds per webhook id, and deliveries to one id that need it at once share
one look-up. A source that raises, times out, answers something that is not a secret or
a list of them, or a malformed secret (not ``whsec_`` + base64: a source mid-rotation
may answer one briefly) raises ``SecretSourceError`` (the delivery is retried, never
sent unsigned); the log line names the webhook id and the problem, never a secret.

A callable source may have a secret for any id, and is asked only by a delivery or
``fetch`` / ``check``: ``has(id)`` answers True for an id it was not asked about yet
(it may have one), ``known(id)`` whether ``keys(id)`` is the whole answer.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError, KitiumQueueError
from ...limits import get_logger
from .signing import check_seconds, secret_key

if TYPE_CHECKING:
    from ...runends import DaemonThreads

__all__ = [
    "DEFAULT_SECRET_CACHE_S",
    "DEFAULT_SECRET_TIMEOUT_S",
    "MAX_KEEP_OLD_S",
    "SecretSource",
    "SecretSourceError",
    "SecretStore",
]

log = get_logger(__name__)

#: Longest overlap of a secret rotation (``rotate_secret(keep_old_s=...)``): a year.
MAX_KEEP_OLD_S = 365 * 86_400
#: How long a callable source's answer for a webhook id is used before it is asked again.
DEFAULT_SECRET_CACHE_S = 60.0
MAX_SECRET_CACHE_S = 86_400
#: Longest a callable source may take for one webhook id before the delivery is retried.
DEFAULT_SECRET_TIMEOUT_S = 10.0
MAX_SECRET_TIMEOUT_S = 120
#: Threads a plain (blocking) callable source runs on, apart from the event loop's
#: default executor (the process's own connections need it); past these, look-ups wait.
SECRET_THREADS = 8
#: Webhook ids whose answers are cached at most (expired ones are dropped first).
MAX_CACHED_IDS = 10_000
#: Least seconds between two log lines about one webhook id's failing source.
WARN_EVERY_S = 30.0

SecretSource = (
    Mapping[str, "str | Sequence[str]"]
    | Callable[[str], "str | Sequence[str] | None"]
    | Callable[[str], "Awaitable[str | Sequence[str] | None]"]
)

_pool: tuple[int, DaemonThreads] | None = None


def _threads() -> DaemonThreads:
    """The threads plain callable sources run on (daemon threads: a source hanging past
    its timeout does not hold the process at exit). A forked child makes its own: the
    parent's threads are not in it."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        from ...runends import DaemonThreads

        _pool = (os.getpid(), DaemonThreads(SECRET_THREADS, "kq-webhook-secrets"))
    return _pool[1]


class SecretSourceError(KitiumQueueError):
    """The secrets source failed for one webhook id: it raised (its exception's type is
    named, never its text), took longer than ``timeout_s``, answered something that is
    not a secret or a list of them, or a malformed secret (never quoted). The delivery
    is retried like a failed one."""


def _is_async(src: Any) -> bool:
    # An ``async def`` function, or an object whose ``__call__`` is one.
    return inspect.iscoroutinefunction(src) or inspect.iscoroutinefunction(type(src).__call__)


class SecretStore:
    """Endpoint secrets, in this process only (see docs/webhooks.md, "Secrets").

    ``source``: a mapping ``webhook id -> secret or [secrets]``, or a callable ``webhook
    id -> secret, [secrets] or None`` (your own config or vault): a plain function is
    called on a thread of its own, so it may block (an HTTP call to a secrets manager);
    an ``async def`` function (or one returning an awaitable) is awaited on the loop.
    A callable's answer is kept ``cache_s`` seconds per id (0: asked at every delivery),
    and each call may take ``timeout_s`` seconds at most. Secrets set here (``set``,
    ``rotate``) take precedence at once. During a rotation every listed secret signs, so
    a receiver holding either one accepts the request.

    Reads that never call a callable source (safe on the event loop): ``has`` (True
    for an id such a source was not asked about yet: it may have one), ``known`` and
    ``keys``. Reads that ask it as a delivery does: ``fetch`` and ``check``.
    """

    def __init__(
        self,
        source: SecretSource | None = None,
        *,
        cache_s: float = DEFAULT_SECRET_CACHE_S,
        timeout_s: float = DEFAULT_SECRET_TIMEOUT_S,
    ) -> None:
        check_seconds(cache_s, "secret_cache_s", MAX_SECRET_CACHE_S)
        check_seconds(timeout_s, "secret_timeout_s", MAX_SECRET_TIMEOUT_S)
        if not timeout_s:
            raise ConfigurationError("secret_timeout_s must be more than 0 seconds")
        self._source = source
        self.cache_s, self.timeout_s = float(cache_s), float(timeout_s)
        # Own secrets: (HMAC key, signs until); a key of None stands for the source's
        # secrets, kept signing for the overlap of a rotation away from them.
        self._own: dict[str, list[tuple[bytes | None, float | None]]] = {}
        self._cache: dict[str, tuple[list[bytes], float]] = {}
        self._inflight: dict[str, asyncio.Task[list[bytes]]] = {}
        # A plain source's call per id still running on a thread (past its look-up's
        # time-out too): the next look-up of that id waits for it rather than take
        # another thread, so one id whose source hangs holds one thread, not all.
        self._running: dict[str, asyncio.Future[Any]] = {}
        self._warned: dict[str, float] = {}

    def set(self, webhook_id: str, secrets: str | Sequence[str]) -> None:
        items = [secrets] if isinstance(secrets, str) else list(secrets)
        if not items:
            raise ConfigurationError("set_secret needs at least one secret")
        self._own[webhook_id] = [(secret_key(s), None) for s in items]

    def rotate(self, webhook_id: str, new_secret: str, keep_old_s: float) -> None:
        """Sign with ``new_secret`` from now on, and with the current secret(s) as well
        for ``keep_old_s`` seconds (receivers switch over in that time): 0 to a year.
        NaN would drop the old secret at once, infinity keep it signing for good. The
        current secrets of an id with none set here are the source's: they are not
        looked up now, but at each delivery of the overlap (cached as usual)."""
        check_seconds(keep_old_s, "rotate_secret keep_old_s (a year at most)", MAX_KEEP_OLD_S)
        new = secret_key(new_secret)
        until = time.time() + keep_old_s
        own = self._live(webhook_id)
        if own is None:
            old: list[tuple[bytes | None, float | None]] = (
                [] if self._source is None else [(None, until)]
            )
        else:
            old = [(k, until) for k, _ in own]
        self._own[webhook_id] = [(new, None), *old]

    def _live(self, webhook_id: str) -> list[tuple[bytes | None, float | None]] | None:
        """The own secrets of ``webhook_id`` still signing (expired ones dropped), or
        None when none were set here."""
        own = self._own.get(webhook_id)
        if own is None:
            return None
        now = time.time()
        live = [(k, t) for k, t in own if t is None or t > now]
        self._own[webhook_id] = live
        return live

    def _cached(self, webhook_id: str) -> list[bytes] | None:
        """The source's secrets of ``webhook_id`` known without calling a callable
        source (a mapping's, or a callable's cached answer), else None."""
        src = self._source
        if src is None:
            return []
        if not callable(src):
            return self._parse(webhook_id, src.get(webhook_id), mapping=True)
        hit = self._cache.get(webhook_id)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def keys(self, webhook_id: str) -> list[bytes]:
        """The HMAC keys ``webhook_id`` is signed with, as far as this process knows
        them without asking a callable source: its set or rotated secrets, a mapping's,
        or a callable source's cached answer (``await fetch(webhook_id)`` asks it). Safe
        to call on the event loop: it never calls the source. While ``known(webhook_id)``
        is False the list lacks the source's secrets (an empty one does not mean "none").
        Raises ``SecretSourceError`` for a mapping holding something that is not a
        secret for that id."""
        own = self._live(webhook_id)
        if own is None:
            return self._cached(webhook_id) or []
        return self._merge(own, lambda: self._cached(webhook_id) or [])

    def known(self, webhook_id: str) -> bool:
        """Whether ``keys(webhook_id)`` is this process's whole answer: False while it
        depends on a callable source whose answer for that id is not cached (not asked
        yet, expired, or ``cache_s`` 0). Never calls the source."""
        if self._source is None or not callable(self._source):
            return True
        own = self._live(webhook_id)
        if own is not None and all(k is not None for k, _ in own):
            return True  # set here: the source is not asked for this id
        return self._cached(webhook_id) is not None

    def has(self, webhook_id: str) -> bool:
        """Whether a delivery to ``webhook_id`` has, or may have, a signing secret here,
        without calling a callable source. True: a secret set here, a mapping's, a
        callable source's cached answer, or a callable source not asked about that id
        yet (it may have any id; a delivery asks it, ``await check(webhook_id)`` does
        now). False: surely none (no source, a mapping without a usable secret for the
        id, a callable source's cached empty answer)."""
        try:
            return bool(self.keys(webhook_id)) or not self.known(webhook_id)
        except SecretSourceError:
            return False

    async def check(self, webhook_id: str) -> bool:
        """Whether ``webhook_id`` has a signing secret in this process, asking a callable
        source as a delivery does when its answer is not cached (off the event loop,
        bounded by ``timeout_s``, then cached). Raises ``SecretSourceError`` when the
        source fails (raises, times out, answers no secret or a malformed one)."""
        return bool(await self.fetch(webhook_id))

    async def fetch(self, webhook_id: str) -> list[bytes]:
        """The HMAC keys ``webhook_id`` is signed with, asking a callable source when its
        answer is not cached (off the event loop, bounded by ``timeout_s``; deliveries
        needing it at once share one call). Raises ``SecretSourceError`` when the
        source (or a mapping) fails: it raised, timed out, or answered something that
        is not a secret or a list of them, or a malformed secret."""
        own = self._live(webhook_id)
        if own is not None and all(k is not None for k, _ in own):
            return [k for k, _ in own if k is not None]
        found = self._cached(webhook_id)
        if found is None:
            found = await self._shared(webhook_id)
        own = self._live(webhook_id)  # set or rotated meanwhile: that takes precedence
        if own is None:
            return found
        got = found
        return self._merge(own, lambda: got)

    @staticmethod
    def _merge(
        own: list[tuple[bytes | None, float | None]], source: Callable[[], list[bytes]]
    ) -> list[bytes]:
        out: list[bytes] = []
        for k, _ in own:
            for key in source() if k is None else [k]:
                if key not in out:
                    out.append(key)
        return out

    def forget(self, webhook_id: str | None = None) -> None:
        """Drop the cached answer of the source for ``webhook_id`` (None: every id), so
        the next delivery asks it again."""
        if webhook_id is None:
            self._cache.clear()
        else:
            self._cache.pop(webhook_id, None)

    async def _shared(self, webhook_id: str) -> list[bytes]:
        loop = asyncio.get_running_loop()
        task = self._inflight.get(webhook_id)
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._lookup(webhook_id))
            self._inflight[webhook_id] = task

            def done(t: asyncio.Task[list[bytes]]) -> None:
                if self._inflight.get(webhook_id) is t:
                    del self._inflight[webhook_id]
                if not t.cancelled():
                    t.exception()  # retrieved, even when every waiter was cancelled

            task.add_done_callback(done)
        # Shielded: a delivery cancelled while it waits leaves the look-up to the others.
        return await asyncio.shield(task)

    async def _lookup(self, webhook_id: str) -> list[bytes]:
        src = self._source
        assert callable(src)
        why, wid = "the secrets source", f"{webhook_id!r:.100}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            if _is_async(src):
                answer: Any = src(webhook_id)
            else:
                answer = await asyncio.wait_for(
                    asyncio.shield(self._thread_call(src, webhook_id)), self.timeout_s
                )
            if inspect.isawaitable(answer):
                answer = await asyncio.wait_for(answer, max(deadline - loop.time(), 0.001))
        except asyncio.TimeoutError as exc:
            if loop.time() < deadline:  # the source's own time-out, raised early
                raise self._failed(
                    webhook_id, f"{why} raised TimeoutError for webhook {wid}"
                ) from exc
            raise self._failed(
                webhook_id, f"{why} took longer than {self.timeout_s:g} s for webhook {wid}"
            ) from None
        except Exception as exc:  # its type only: a vault client's text may quote anything
            raise self._failed(
                webhook_id, f"{why} raised {type(exc).__name__} for webhook {wid}"
            ) from exc
        keys = self._parse(webhook_id, answer)
        if self.cache_s:
            if len(self._cache) >= MAX_CACHED_IDS:
                now = time.monotonic()
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                if len(self._cache) >= MAX_CACHED_IDS:
                    self._cache.clear()
            self._cache[webhook_id] = (keys, time.monotonic() + self.cache_s)
        self._warned.pop(webhook_id, None)
        return keys

    def _thread_call(self, src: Callable[[str], Any], webhook_id: str) -> asyncio.Future[Any]:
        """The call of the plain source ``src`` for ``webhook_id`` on a thread of its own:
        the one still running for that id (a time-out does not end it), or a new one."""
        loop = asyncio.get_running_loop()
        call = self._running.get(webhook_id)
        if call is None or call.done() or call.get_loop() is not loop:
            call = loop.run_in_executor(_threads(), src, webhook_id)
            self._running[webhook_id] = call

            def done(f: asyncio.Future[Any]) -> None:
                if self._running.get(webhook_id) is f:
                    del self._running[webhook_id]
                if not f.cancelled():
                    f.exception()  # retrieved, even when its look-up had timed out

            call.add_done_callback(done)
        return call

    def _parse(self, webhook_id: str, answer: Any, *, mapping: bool = False) -> list[bytes]:
        """The HMAC keys of a source's answer: None or empty (no secret), a secret, or a
        sequence of them; anything else, or a malformed secret, raises
        ``SecretSourceError`` (never quoting it: a source mid-rotation may answer a bad
        value briefly, so the attempt is retried)."""
        if answer is None or answer == "":
            return []
        items = [answer] if isinstance(answer, str) else answer
        bad = None
        if isinstance(items, (bytes, bytearray, memoryview)) or not isinstance(items, Sequence):
            bad = type(items).__name__
        else:
            bad = next((type(s).__name__ for s in items if not isinstance(s, str)), None)
            if bad is not None:
                bad = f"a sequence holding {bad}"
        said = "the secrets mapping holds" if mapping else "the secrets source returned"
        wid = f"{webhook_id!r:.100}"
        if bad is not None:
            raise self._failed(
                webhook_id,
                f"{said} {bad} for webhook {wid}, not a secret (str) or a list of them",
            )
        try:
            return [secret_key(s) for s in items]
        except ConfigurationError:  # its text never quotes the secret; ours neither
            raise self._failed(
                webhook_id,
                f"{said} a malformed secret for webhook {wid} (a secret is 'whsec_' "
                "followed by base64: make one with generate_secret())",
            ) from None

    def _failed(self, webhook_id: str, text: str) -> SecretSourceError:
        """The error of a failed look-up, logged (at most every ``WARN_EVERY_S`` per id)."""
        err = SecretSourceError(text)
        now = time.monotonic()
        if now - self._warned.get(webhook_id, -WARN_EVERY_S) >= WARN_EVERY_S:
            if len(self._warned) >= MAX_CACHED_IDS:
                self._warned.clear()
            self._warned[webhook_id] = now
            log.warning("%s: its deliveries are not sent, and retried", err)
        return err
