"""Loads the Lua scripts (with ``--@include``), and runs them by SHA with NOSCRIPT reload."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import sys
import weakref
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import ClusterError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connerrors import NOPERM, permission_denied
from .damage import explain_damage
from .errors import ConfigurationError, error_from_script
from .expanded import ExpandedScripts
from .limits import get_logger
from .pools import stream_ended, waiters_of
from .replies import (
    ReplyChannel,
    ReplyTimeout,
    channel_for,
    kept_channel,
    pack_args,
    release_channel,
)
from .serverinfo import reply_text, write_refused
from .slots import GENERATED, SLOTS, SlotTable

log = get_logger(__name__)

__all__ = [
    "MAX_IDLE_CONNS", "REPLY_TIMEOUT_S", "SCRIPT_NAMES", "RawCall", "Script", "ScriptCall",
    "ScriptRegistry", "pack_args", "translate_error",
]  # fmt: skip

#: Deadline of one script exchange (send + replies) on the hot path.
REPLY_TIMEOUT_S = 15.0

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - redis-py depends on async-timeout before 3.11.3
    from async_timeout import timeout as _deadline  # type: ignore[import-not-found,no-redef,unused-ignore]

SCRIPT_NAMES = (
    "enqueue",
    "claim",
    "extend",
    "finish",
    "recover",
    "promote",
    "retry",
    "replay",
    "remove",
    "cancel",
    "drain",
    "clear",
    "pause",
    "update",
    "stats",
    "schedule_put",
    "schedule_remove",
    "schedule_pause",
    "schedule_due",
    "schedule_fire",
)

_INCLUDE = re.compile(r"^--@include (\w+)\s*$", re.MULTILINE)
#: Compiled scripts by SHA1, shared by the queues of the process that use them.
_SHARED: weakref.WeakValueDictionary[str, Script] = weakref.WeakValueDictionary()
#: Composed scripts by (name, composition digest) for every registry of the process.
_EXPANDED: ExpandedScripts[Script] = ExpandedScripts()


@functools.cache  # the package's own files: fixed for the process
def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"lua/{name}.lua").read_text("utf-8")


@dataclass(frozen=True)  # no slots: shared through weak references (``_SHARED``)
class Script:
    """One compiled script: its name, full source (includes expanded) and SHA1."""

    name: str
    source: str
    sha: str


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """A script invocation to run alone or in a pipeline."""

    script: str
    keys: Sequence[str]
    args: Sequence[Any]


@dataclass(frozen=True, slots=True)
class RawCall:
    """A plain command sent in the same exchange as script calls, on the same connection
    and after them: ``WAIT`` must follow the writes it waits for on their connection
    (``write barriers``, ``barrier.py``)."""

    args: Sequence[Any]


#: What ``ScriptRegistry.pipeline`` sends: script calls and plain commands, in order.
Call = ScriptCall | RawCall


class ScriptRegistry:
    """The set of scripts a queue runs, with their fragments resolved.

    Scripts are composed from the files in ``lua/``: ``--@include NAME`` pulls in a
    fragment (once per script: the first occurrence wins), and the Lua slots that
    features fill (``add_slot``; ``kitium_queue.slots``) are compiled in where the
    scripts call them. Features register fragments and slots before the queue starts
    (a later change reaches workers through the NOSCRIPT fallback of each call).
    """

    def __init__(self) -> None:
        self._fragments: dict[str, str] = {}
        self._slots = SlotTable()
        self._compiled: dict[str, Script] = {}
        self._digest: str | None = None  # of the fragments and slots: ``_composition``
        self._generation = 0  # changes so far: what another thread changed is not cached
        self._loaded: set[int] = set()
        self._heads: dict[tuple[str, Sequence[str]], bytes] = {}
        # Connections the packed path keeps between exchanges, per connection pool:
        # taking one back skips the pool's lock, health probe and bookkeeping. They stay
        # checked out of the pool, so its limits and disconnect() still cover them.
        self._idle: weakref.WeakKeyDictionary[Any, _Idle] = weakref.WeakKeyDictionary()

    # -- composition ------------------------------------------------------------------
    def add_fragment(self, name: str, source: str) -> None:
        """Provide (or override) a fragment that scripts pull in with ``--@include``."""
        self._fragments[name] = source
        self._changed()

    def add_slot(
        self, slot: str, name: str, source: str, *, fields: Sequence[str] = (), order: int = 0
    ) -> None:
        """Fill Lua slot ``slot`` (one of ``slots.SLOTS``) with a
        fragment: a Lua expression evaluating to the function that slot calls.

        Fragments of a slot run by ``order`` (lower first), then in the order they were
        added; adding one under an existing name replaces it. ``fields`` (admission,
        release): job-hash fields the fragment reads, passed to it from claim's
        (finish's) own read. The signature per slot, the orders features use, what a
        fragment may call and must never do: ``kitium_queue.slots``. Raises
        ``ConfigurationError`` for an unknown slot or a fragment that does not compile.
        """
        if isinstance(fields, str):
            raise ConfigurationError(f"fields of {name!r} must be a sequence of names, not a str")
        self._slots.add(slot, name, source, tuple(fields), order)
        self._changed()

    def remove_slot(self, slot: str, name: str) -> None:
        """Take fragment ``name`` out of ``slot`` (nothing happens if it is not there)."""
        self._slots.remove(slot, name)
        self._changed()

    def slot_names(self, slot: str) -> list[str]:
        """Names of the fragments filling ``slot``, in the order they run."""
        return self._slots.names(slot)

    def add_admission_check(self, name: str, source: str) -> None:
        """Add a Lua expression evaluating to ``function(id, jk, opts) ... end``.

        The same as ``add_slot("admission", name, source)``. The check runs inside
        ``claim`` for every candidate (``opts``: the job's options JSON or ``false``);
        returning false leaves the job in wait untouched. Checks run in the order they
        were added; adding one under an existing name replaces it.

        A check that admits may return a second value, ``commit``: it is called as
        ``commit(id, jk)`` only once *every* check admitted the candidate — count the
        job against limits there, so a job a later check rejects is never counted. A
        check that rejects may call ``admit_retry(t_ms)`` (when the candidate may become
        eligible: the worker sleeps until then), ``admit_stop()`` (no later candidate
        can pass this call: stop scanning) or ``admit_park(blocker)`` (park the job
        behind ``blocker``, out of wait). See ``lua/admission.lua``.
        """
        self.add_slot("admission", name, source)

    def _changed(self) -> None:
        self._generation += 1
        self._compiled.clear()
        self._heads.clear()
        self._digest = None

    def _composition(self) -> str:
        """Digest of what expansion reads beyond the package's files: fragments, slots."""
        digest = self._digest
        if digest is None:
            generation = self._generation
            parts = (sorted(self._fragments.items()), self._slots.signature())
            digest = hashlib.sha1(repr(parts).encode("utf-8")).hexdigest()
            if generation == self._generation:  # else changed meanwhile: not kept
                self._digest = digest
        return digest

    def _fragment(self, name: str) -> str:
        if name in self._fragments:
            return self._fragments[name]
        if name in GENERATED:
            return self._slots.compose(name)
        return _read(name)

    def _expand(self, source: str, seen: set[str], flags: frozenset[str]) -> str:
        # Directives first (they may drop includes), then each include once per script.
        source = self._slots.apply_directives(source, flags)

        def sub(match: re.Match[str]) -> str:
            frag = match.group(1)
            if frag in seen:
                return ""
            seen.add(frag)
            return self._expand(self._fragment(frag), seen, flags)

        return _INCLUDE.sub(sub, source)

    def get(self, name: str) -> Script:
        """The compiled script ``name``: includes expanded, slots composed."""
        script = self._compiled.get(name)
        while script is None:
            generation = self._generation
            key = (name, self._composition())
            script = _EXPANDED.get(key)
            if script is None:
                raw = self._fragments.get(name) or _read(name)
                source = self._expand(raw, {name}, self._slots.flags())
                if generation != self._generation:  # changed under it (a thread): again
                    continue
                sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
                # One copy per process of each composed text (~880 KB a queue otherwise).
                script = _SHARED.setdefault(sha, Script(name, source, sha))
                _EXPANDED.put(key, script)
            if generation == self._generation:  # else changed since: not kept
                self._compiled[name] = script
        return script

    # -- execution --------------------------------------------------------------------
    async def load(self, client: Any) -> None:
        """SCRIPT LOAD every script, once per client (on every primary of a cluster).

        A server that lost its script cache since (restart, failover to a replica that
        never saw the load) answers NOSCRIPT; calls then fall back to EVAL with the
        source, which runs on whichever node owns the keys and caches it there. So does
        a server that refuses ``SCRIPT`` itself (renamed away by a managed service, or
        an ACL without ``script|load``): nothing is loaded up front, and each script is
        sent with EVAL the first time. Only scripts ``SCRIPT EXISTS`` says the server
        lacks are sent (each queue and client would send all, ~450 KB, at every start).
        """
        scripts = [self.get(name) for name in SCRIPT_NAMES]
        try:
            have = [bool(x) for x in await client.script_exists(*(s.sha for s in scripts))]
        except ResponseError:  # refused (ACL) or renamed away: SCRIPT LOAD says which
            have = []
        for s in [s for i, s in enumerate(scripts) if i >= len(have) or not have[i]]:
            try:
                await client.script_load(s.source)
            except ResponseError as exc:
                if NOPERM.search(str(exc)) or _UNKNOWN_SCRIPT.search(str(exc)):
                    log.info(
                        "SCRIPT LOAD refused by the server (%s): scripts are sent with "
                        "EVAL on first use",
                        str(exc).split(",", 1)[0][:120],
                    )
                    break
                if "compil" not in str(exc).lower():
                    raise
                # The engine's own scripts compile: a slot fragment broke this one.
                raise ConfigurationError(
                    f"script {s.name} does not compile with the Lua slot fragments "
                    f"registered ({self._slot_summary()}): {exc}"
                ) from None
        self._loaded.add(id(client))

    def _slot_summary(self) -> str:
        names = {slot: ", ".join(self._slots.names(slot)) for slot in SLOTS}
        return "; ".join(f"{s}: {n}" for s, n in names.items() if n) or "none"

    async def call(self, client: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script; on NOSCRIPT run it once with EVAL (which caches it there)."""
        s = self.get(name)
        if id(client) not in self._loaded:
            await self.load(client)
        try:
            if _is_plain_redis(client):
                (reply,) = await self._run_packed(client, (ScriptCall(name, keys, args),))
                if isinstance(reply, Exception):
                    raise reply
                return reply
            return await client.execute_command("EVALSHA", s.sha, len(keys), *keys, *args)
        except NoScriptError:
            try:
                if _is_plain_redis(client):
                    # The same path as the call (after a restart, the pool's other
                    # connections may still be the closed ones: _run_packed checks).
                    eval_call = RawCall(("EVAL", s.source, len(keys), *keys, *args))
                    (reply,) = await self._run_packed(client, (eval_call,))
                    if isinstance(reply, Exception):
                        raise reply
                    return reply
                return await client.execute_command("EVAL", s.source, len(keys), *keys, *args)
            except (ResponseError, ClusterError) as exc:
                raise await explain_damage(client, keys, translate_error(exc)) from exc
        except (ResponseError, ClusterError) as exc:
            raise await explain_damage(client, keys, translate_error(exc)) from exc

    async def pipeline(self, client: Any, calls: Sequence[Call]) -> list[Any]:
        """Run several scripts in one round trip (not a transaction), on one connection.

        ``calls`` may hold plain commands too (``RawCall``), run in their place.

        Each result is the script's reply or an exception instance; commands refused with
        NOSCRIPT (never executed) are re-run with EVAL, which also caches them on the
        node that refused them.

        The whole exchange has one reply deadline (``REPLY_TIMEOUT_S``), and a timeout
        tells nothing about which calls ran: keep pipelines to what fits that deadline,
        and send work whose progress must be known (``JobQueue.add_jobs``) call by call.
        """
        if id(client) not in self._loaded:
            await self.load(client)
        results = await self._run_pipe(client, calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # Plain commands go again after the re-run scripts: a WAIT must come after
            # the writes it waits for, on their connection.
            raw = [i for i, c in enumerate(calls) if isinstance(c, RawCall)]
            pipe = client.pipeline(transaction=False)
            for i in missing:
                c = calls[i]
                assert isinstance(c, ScriptCall)
                source = self.get(c.script).source
                pipe.execute_command("EVAL", source, len(c.keys), *c.keys, *c.args)
            for i in raw:
                pipe.execute_command(*calls[i].args)
            again = list(await pipe.execute(raise_on_error=False))
            for i, r in zip(missing + raw, again, strict=True):
                results[i] = r
        return [translate_error(r) if isinstance(r, _REPLY_ERRORS) else r for r in results]

    def fusable(self, client: Any) -> bool:
        """Whether ``after_block`` can send its two commands in one exchange on
        ``client`` (a plain, pooled redis-py client; not a cluster)."""
        return _is_plain_redis(client)

    async def after_block(
        self, client: Any, command: Sequence[Any], call: ScriptCall
    ) -> tuple[Any, Any]:
        """Send the blocking ``command`` and the script ``call`` in one exchange (a
        ``fusable`` client only): Redis runs the script as soon as the command returns,
        with no round trip between them. Returns both replies; either may be an
        exception instance. A script refused with NOSCRIPT runs again alone with EVAL
        (the command is not sent again)."""
        if id(client) not in self._loaded:
            await self.load(client)
        first, reply = await self._run_packed(client, (RawCall(command), call))
        if isinstance(reply, NoScriptError):
            try:
                reply = await self.call(client, call.script, call.keys, call.args)
            except Exception as exc:  # returned like every other reply
                reply = exc
        elif isinstance(reply, ResponseError):
            reply = translate_error(reply)
        return first, reply

    async def _run_pipe(self, client: Any, calls: Sequence[Call]) -> list[Any]:
        if _is_plain_redis(client):
            return await self._run_packed(client, calls)
        pipe = client.pipeline(transaction=False)
        for c in calls:
            if isinstance(c, RawCall):
                pipe.execute_command(*c.args)
                continue
            s = self.get(c.script)
            pipe.execute_command("EVALSHA", s.sha, len(c.keys), *c.keys, *c.args)
        try:
            return list(await pipe.execute(raise_on_error=False))
        except ClusterError as exc:  # a Cluster's redirections ran out: a slot moving
            raise translate_error(exc) from exc

    async def _run_packed(self, client: Any, calls: Sequence[Call]) -> list[Any]:
        # The hot path of every worker: pack the RESP commands ourselves (the script
        # header is identical for every call, so it is packed once) and write them in one
        # send. The whole exchange has one deadline (REPLY_TIMEOUT_S): a server or a
        # network path that goes silent becomes a TimeoutError the loops handle, without
        # paying for a timer per socket operation.
        buf: list[bytes] = []
        for c in calls:
            if isinstance(c, RawCall):
                buf.append(b"*%d\r\n" % len(c.args))
                buf.append(pack_args(c.args))
                continue
            buf.append(b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + len(c.keys) + len(c.args)))
            buf.append(self.packed_head(c))
            buf.append(pack_args(c.args))
        pool = client.connection_pool
        idle = self._idle.get(pool)
        if idle is None:
            idle = self._idle[pool] = _Idle(pool)
        conn = channel = None
        while idle:
            kept = idle.pop()
            channel = kept_channel(kept) if _DIRECT_REPLIES else None
            if channel is not None or _alive(kept):
                conn = kept
                break
            # Closed by the server while idle (restart, failover, client timeout): drop
            # the socket, so the pool reconnects it rather than hand it out as it is.
            await kept.disconnect(nowait=True)
            await pool.release(kept)
        if conn is None:
            conn = await pool.get_connection()
            if not _alive(conn):
                # redis-py's pool misses a connection whose server closed it while it sat
                # in the pool (a restart): its stream is at EOF, and a request sent on it
                # would wait for a reply that never comes. The pools the queue builds
                # reconnect it already (connection._CheckedPool); a client passed in may
                # not. Nothing was sent: reconnect.
                try:
                    await conn.disconnect(nowait=True)
                    await conn.connect()
                except BaseException:
                    await pool.release(conn)
                    raise
        if _DIRECT_REPLIES:
            channel = channel or channel_for(conn)
            if channel is not None:
                payload = b"".join(buf)
                return await self._exchange_direct(pool, idle, conn, channel, payload, len(calls))
        elif not release_channel(conn):  # switched off meanwhile (bench_single does)
            await conn.disconnect(nowait=True)
        clean = False
        try:
            async with _deadline(REPLY_TIMEOUT_S):
                await conn.send_packed_command(b"".join(buf))
                out: list[Any] = []
                for _ in calls:
                    try:
                        out.append(await conn.read_response())
                    except ResponseError as exc:
                        out.append(exc)
            clean = True
            return out
        except (TimeoutError, asyncio.TimeoutError):
            await conn.disconnect(nowait=True)
            raise _no_reply() from None
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            # Every reply was read: the connection is clean and can serve the next
            # exchange as it is. After an error it goes back through the pool, which
            # reconnects it and checks it before anyone uses it again.
            if clean and idle.keeps() and conn.is_connected:
                idle.append(conn)
            else:
                await pool.release(conn)

    def packed_head(self, c: ScriptCall) -> bytes:
        """RESP of ``c``'s script SHA, key count and keys (the same for every call of that
        script on those keys, so it is packed once): what follows ``EVALSHA``."""
        hkey = (c.script, tuple(c.keys))
        head = self._heads.get(hkey)
        if head is None:
            s = self.get(c.script)
            head = pack_args((s.sha, len(c.keys), *c.keys))
            self._heads[hkey] = head
        return head

    async def _exchange_direct(
        self,
        pool: Any,
        idle: _Idle,
        conn: Any,
        channel: ReplyChannel,
        payload: bytes,
        n: int,
    ) -> list[Any]:
        # The replies come through the connection's ReplyChannel (replies.py), which
        # also keeps the exchange's deadline.
        try:
            out = await channel.exchange(payload, n, REPLY_TIMEOUT_S)
            for r in out:
                # What redis-py's reader raises rather than returns (LOADING, a refused
                # connection): the exchange failed as a whole, as on redis-py's path.
                if isinstance(r, RedisConnectionError):
                    raise r
        except BaseException as exc:
            channel.abandon()
            await conn.disconnect(nowait=True)
            await pool.release(conn)
            if isinstance(exc, ReplyTimeout):
                raise _no_reply() from None
            raise
        if idle.keeps() and channel.usable:
            idle.append(conn)
        else:
            if not release_channel(conn):
                await conn.disconnect(nowait=True)
            await pool.release(conn)
        return out

    def forget(self, client: Any) -> None:
        self._loaded.discard(id(client))


#: Most connections kept checked out between exchanges, per pool.
MAX_IDLE_CONNS = 8


class _Idle(list[Any]):
    """The connections of one pool kept checked out between exchanges (no pool round
    trip on the hot path). Never all of the pool's (``max_connections - 1`` at most,
    so a command waiting for the pool always has a connection that comes back), and
    none while callers wait for the pool (a connection that is free goes back to
    it)."""

    def __init__(self, pool: Any) -> None:
        super().__init__()
        # The pool's line of waiting callers (not the pool: this list is the value of a
        # WeakKeyDictionary keyed by the pool).
        self.waiters: Sized = waiters_of(pool)
        most = getattr(pool, "max_connections", MAX_IDLE_CONNS + 1)
        self.cap = min(MAX_IDLE_CONNS, most - 1) if isinstance(most, int) else MAX_IDLE_CONNS

    def keeps(self) -> bool:
        """Whether one more connection may be kept aside."""
        return len(self) < self.cap and not self.waiters


#: Read replies through ``replies.ReplyChannel`` where the connection allows it (off:
#: redis-py's reading, as bench/bench_single.py compares).
_DIRECT_REPLIES = True


def _no_reply() -> RedisTimeoutError:
    return RedisTimeoutError(
        f"no reply from Redis within {REPLY_TIMEOUT_S:.0f} s; connection dropped"
    )


def _alive(conn: Any) -> bool:
    # The event loop reads every open socket in the background, so a connection the
    # server closed or reset while it sat idle already shows EOF or an error here; one
    # whose transport this side closed shows it on the transport (pools.stream_ended).
    writer = getattr(conn, "_writer", None)
    if getattr(conn, "_reader", None) is None or writer is None or stream_ended(conn):
        return False
    proto = writer.transport.get_protocol()
    return not isinstance(proto, ReplyChannel) or proto.usable


def _is_plain_redis(client: Any) -> bool:
    cls = type(client)
    known = _PLAIN.get(cls)
    if known is None:
        import redis.asyncio as aioredis

        known = issubclass(cls, aioredis.Redis) and not cls.__module__.startswith("fakeredis")
        _PLAIN[cls] = known
    return known and not getattr(client, "single_connection_client", False)


_PLAIN: dict[type, bool] = {}
# Error replies a call's result may be (a Cluster's: its redirections ran out).
_REPLY_ERRORS = (ResponseError, ClusterError)


def translate_error(exc: ResponseError | ClusterError) -> Exception:
    """The library's error for an error reply of a script call (``KQ_*`` codes, refused
    writes, ACL refusals), or ``exc`` itself."""
    text = str(exc)
    refused = write_refused(reply_text(exc))  # with the code redis-py strips put back
    if refused is not None:
        return refused
    # Redis wraps script errors: "... KQ_CODE detail ..." may carry a script prefix.
    for word_start in (0, text.find("KQ_")):
        if word_start >= 0:
            mapped = error_from_script(text[word_start:])
            if mapped is not None:
                return mapped
    if NOPERM.search(text):
        return permission_denied(text)
    return exc


# SCRIPT renamed away by the server (refused by the ACL: NOPERM).
_UNKNOWN_SCRIPT = re.compile(r"unknown command .?SCRIPT", re.I)
