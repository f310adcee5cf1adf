"""Reading job records for the listings without replies the server refuses to send.

Redis closes a normal client's connection whose unsent replies pass its
``client-output-buffer-limit`` (unlimited by default; managed services and hardened
configurations set one, such as 64 KB), so a listing of large records read in one
pipeline was cut off, and raised redis-py's bare "Connection closed by server" although
the server was up. Here:

* records are read ``RECORD_CHUNK`` per round trip (the reply of one pipeline stays
  near ``RECORD_CHUNK`` records, whatever the listing's ``limit``);
* a pipeline cut off while Redis answers ``PING`` right after is read again one record
  per round trip, for the rest of the listing (reads change nothing: reading again is
  safe);
* a reply cut off alone (one record larger than the limit) raises
  ``ReplyCutOffError``, saying what to change (``cut_off``).

A listing that shows no payload reads only the fields it shows (``fields``: ``HMGET``
instead of ``HGETALL``), so what it moves from Redis and holds in memory per job is
bounded by those fields, whatever the size of the job's data or result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from .connerrors import closed_by_server, reply_cut_off
from .errors import ConnectionUnavailableError

if TYPE_CHECKING:
    from .context import QueueContext

__all__ = ["NO_FIELDS", "RECORD_CHUNK", "cut_off", "read_records"]

#: Job records read per round trip by the listings: a default listing of 20 jobs is
#: one round trip, and one of 100,000 holds no reply of more than this many records.
RECORD_CHUNK = 20
#: What ``read_records`` gives, reading ``fields``, for a record that exists but holds
#: none of them (a record written by hand): it is damaged, not gone.
NO_FIELDS: Final[Any] = object()
#: How long the ``PING`` that tells a cut-off reply from a server gone may take.
_PING_S = 2.0


async def cut_off(ctx: QueueContext, client: Any, exc: BaseException, what: str) -> BaseException:
    """``ReplyCutOffError`` for ``exc`` when it is the server closing the connection
    while it sent the reply to ``what`` (a read of ``ctx``'s queue) and Redis answers
    ``PING`` right after; else ``exc`` itself (raise it as it is)."""
    if closed_by_server(exc) and getattr(ctx, "_client", None) is not client:
        # The queue's close() released this client while the call ran: our side cut it.
        return ConnectionUnavailableError(
            f"queue {ctx.name!r} was closed while {what} ran, which cut its connection; "
            "call again once the queue is in use again (it connects again), or close it "
            "only after its calls have ended"
        )
    if not await _answers_after(client, exc):
        return exc
    return reply_cut_off(ctx.connection.describe(), ctx.name, what)


async def _answers_after(client: Any, exc: BaseException) -> bool:
    """Whether ``exc`` is a connection closed by the server while Redis answers now."""
    if not closed_by_server(exc):
        return False
    try:
        await asyncio.wait_for(client.ping(), _PING_S)
    except Exception:  # gone indeed (or refusing): the original error says so
        return False
    return True


async def read_records(
    ctx: QueueContext,
    client: Any,
    keys: Sequence[str | bytes],
    meta: str,
    fields: Sequence[bytes] | None = None,
) -> tuple[list[Any], Any]:
    """``HGETALL`` of each of ``keys`` (replies or exception instances, in order) and
    the ``paused`` field of ``meta``, read as the module's text says.

    With ``fields``, only those fields (``HMGET``): each reply is then a dict of the
    fields the record holds, empty when the record is gone, ``NO_FIELDS`` when it
    exists without any of them."""
    out: list[Any] = []
    paused: Any = None
    size = RECORD_CHUNK
    start = 0
    while start < len(keys) or start == 0:
        chunk = keys[start : start + size]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            if fields is None:
                pipe.hgetall(key)
            else:
                pipe.hmget(key, fields)
        if start == 0:
            pipe.hget(meta, "paused")
        try:
            got = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            if not await _answers_after(client, exc):
                raise
            if size > 1:
                size = 1  # the server cut a reply off: one record per reply from here on
                continue
            job = _shown_id(chunk[0]) if chunk else "none"
            what = f"a listing (the record of job {job} alone)"
            raise reply_cut_off(ctx.connection.describe(), ctx.name, what) from None
        if start == 0:
            paused = got.pop()
        out += got
        start += len(chunk) or 1
    if fields is not None:
        out = await _field_maps(client, keys, out, fields)
    return out, paused


async def _field_maps(
    client: Any, keys: Sequence[str | bytes], replies: list[Any], fields: Sequence[bytes]
) -> list[Any]:
    """``HMGET`` replies as dicts of the fields present; a record without any of them
    is told from one that is gone by ``EXISTS`` (one more round trip, only then)."""
    out: list[Any] = [
        r
        if isinstance(r, BaseException)
        else {f: v for f, v in zip(fields, r, strict=False) if v is not None}
        for r in replies
    ]
    empty = [i for i, r in enumerate(out) if isinstance(r, dict) and not r]
    if empty:
        pipe = client.pipeline(transaction=False)
        for i in empty:
            pipe.exists(keys[i])
        for i, there in zip(empty, await pipe.execute(), strict=True):
            if there:
                out[i] = NO_FIELDS
    return out


def _shown_id(key: str | bytes) -> str:
    text = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else key
    return repr(text.rsplit(":job:", 1)[-1][:100])
