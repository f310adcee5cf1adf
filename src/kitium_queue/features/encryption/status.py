"""``RotationStatus`` and ``read_status``: the queue's keys and its latest rotation, read
from Redis (``<prefix>enc``, ``<prefix>enc:keys``, ``<prefix>enc:rotation``), with who
runs the pass (the ``encryption-rotation`` lease) and which processes lack the current
key (``<prefix>enc:lacking``, written by ``leading.RotationService``); ``verify_keys``
compares the keys a process holds with their check values (``<prefix>enc:check``).

The records are read back from Redis, untrusted: one damaged by hand or by another
client (another Redis type, fields that are no key id or number) reads as unknown, and
``RotationStatus.damaged`` says what is wrong and how to repair it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ResponseError

from ...limits import get_logger
from ...serverclock import execute_with_clock
from .crypto import KeyMismatchError, is_key_id

if TYPE_CHECKING:
    from ...queue import JobQueue
    from .manager import EncryptionManager

__all__ = ["CHECKS", "LACKING", "ROLE", "RotationStatus", "read_status", "verify_keys", "wrongtype"]

log = get_logger(__name__)

#: The leader-only service (and lease role) that runs the rotation pass.
ROLE = "encryption-rotation"
#: Hash of the processes lacking the current key (relative to the queue's prefix).
LACKING = "enc:lacking"
#: Per key id, the check value of the key recorded for the queue (``verify_keys``).
CHECKS = "enc:check"
#: A report of a lacking process older than this (Redis' clock, ms) is ignored: the
#: process is gone or holds the key now (reports are refreshed every 10 s).
LACKING_STALE_MS = 30_000
#: Most lacking processes listed.
_MAX_LACKING = 10


def wrongtype(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a command on a key of another type."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


@dataclass(slots=True)
class RotationStatus:
    """The queue's keys and its latest rotation (``EncryptionManager.rotation_status``).

    Attributes:
        current_key_id: the key new jobs use (None before the first ``initialize``, or
            when its record is damaged).
        key_ids: every key id recorded for the queue (ids only: Redis never holds keys).
        rotation: number of the latest rotation (0 = none yet).
        state: ``none``, ``running``, ``done``, or ``damaged`` (the rotation record was
            damaged by hand or another client: no pass runs; see ``damaged``).
        from_key_id / to_key_id: the rotation's keys.
        rotated_at / finished_at / updated_at: ms since the epoch.
        round: the sweep round in progress (or last); scanned / total: records walked in
            it, and about how many there are.
        reencrypted: ciphertexts rewritten under the new key, in all rounds.
        conflicts: records skipped in the round because they changed or were active.
        undecryptable: ciphertexts the pass could not open (unknown key or tampered: they
            stay as they are), in the last round; problems: the first few of them.
        clean_rounds: consecutive rounds that found nothing left (2 ends the pass).
        damaged: "" when the keys' records read well; else what is damaged in them and
            how to repair it (the fields concerned read as unknown).
        leader: ``host:pid`` of the process leading the pass (the ``encryption-rotation``
            lease), None when none does.
        lacking: the processes (``host:pid``) that do not hold the current key, so do
            not run the pass, each with the ids they hold (reported in the last 30 s by
            workers with ``run_rotation``).
        stalled: "" normally; while a rotation is running and no process holding the
            current key leads the pass, what is missing where and what to do.
    """

    current_key_id: str | None = None
    key_ids: list[str] = field(default_factory=list)
    rotation: int = 0
    state: str = "none"
    from_key_id: str | None = None
    to_key_id: str | None = None
    rotated_at: int | None = None
    finished_at: int | None = None
    updated_at: int | None = None
    round: int = 0
    scanned: int = 0
    total: int = 0
    reencrypted: int = 0
    conflicts: int = 0
    undecryptable: int = 0
    problems: str = ""
    clean_rounds: int = 0
    damaged: str = ""
    leader: str | None = None
    lacking: list[str] = field(default_factory=list)
    stalled: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def fraction(self) -> float:
        """Progress of the current round, 0..1 (1 when done)."""
        if self.state == "done":
            return 1.0
        return min(1.0, self.scanned / self.total) if self.total else 0.0


async def read_status(queue: JobQueue) -> RotationStatus:
    """The ``RotationStatus`` of ``queue`` (one round trip; on a Redis Cluster, whose
    pipelines refuse ``TIME``, the clock is read in a second one). Records damaged by hand or
    by another client (another Redis type, fields that are no key id or number) read as
    unknown and are described in ``damaged``, with how to repair them."""
    client = await queue.client()
    meta, ids_key, rot_key = (queue.keys.extra(k) for k in ("enc", "enc:keys", "enc:rotation"))
    pipe = client.pipeline(transaction=False)
    pipe.hget(meta, "current")
    pipe.hkeys(ids_key)
    pipe.hgetall(rot_key)
    pipe.get(queue.keys.extra(f"leader:{ROLE}"))
    pipe.hgetall(queue.keys.extra(LACKING))
    replies, now = await execute_with_clock(
        client, pipe, cluster=queue.connection.is_cluster, raise_on_error=False
    )
    cur, ids, rec, lease, lacks = replies
    damaged: list[str] = []
    for key, got, fix in (
        (meta, cur, _FIX_META),
        (ids_key, ids, _FIX_IDS),
        (rot_key, rec, _FIX_ROT),
    ):
        if isinstance(got, Exception):
            if not wrongtype(got):
                raise got
            damaged.append(f"{key} holds another type (DEL it: {fix})")
    current = None if cur is None or isinstance(cur, Exception) else _key_id(cur)
    if cur is not None and not isinstance(cur, Exception) and current is None:
        damaged.append(
            f"{meta} current is not a key id (HSET it to a key your processes hold, or "
            f"DEL the key: {_FIX_META})"
        )
    key_ids = [] if isinstance(ids, Exception) else [_key_id(i) for i in ids]
    if None in key_ids:
        damaged.append(f"{ids_key} has fields that are not key ids (HDEL them)")
    rec = {} if isinstance(rec, Exception) else rec

    def text(k: str) -> str | None:
        v = rec.get(k.encode())
        return None if v is None else v.decode("utf-8", "replace")

    def num(k: str) -> int:
        v = rec.get(k.encode())
        return int(v) if v is not None and v.isdigit() and len(v) <= 16 else 0

    state = text("state") or "none"
    n = rec.get(b"n")
    if rec and (state not in ("running", "done") or n is None or num("n") < 1):
        damaged.append(f"{rot_key} is not a rotation record (state, or n) (DEL it: {_FIX_ROT})")
        state = "damaged"
    leader = _holder(lease)
    lacking, lacked = _lacking(lacks, now, current)
    stalled = ""
    if state == "running" and current is not None and lacked:
        who = [p.split(" ", 1)[0] for p in lacking]
        if leader is None or leader in who:
            stalled = (
                f"no process holding the current key {current!r} leads the pass ("
                f"{'none leads' if leader is None else leader + ' leads but lacks it'}); "
                f"lacking it: {'; '.join(lacking)}. Start a worker (run_rotation=True) "
                f"whose configuration holds key {current!r}, or run the pass with "
                "EncryptionManager.run_rotation() in a process that holds it"
            )
    return RotationStatus(
        current_key_id=current,
        key_ids=sorted(k for k in key_ids if k is not None),
        rotation=num("n"),
        state=state,
        from_key_id=_key_id(rec.get(b"from")),
        to_key_id=_key_id(rec.get(b"to")),
        rotated_at=num("rotated_at") or None,
        finished_at=num("finished_at") or None,
        updated_at=num("updated_at") or None,
        round=num("round"),
        scanned=num("scanned"),
        total=num("total"),
        reencrypted=num("reencrypted"),
        conflicts=num("conflicts"),
        undecryptable=num("undecryptable"),
        problems=text("problems") or "",
        clean_rounds=num("clean_rounds"),
        damaged="; ".join(damaged),
        leader=leader,
        lacking=lacking,
        stalled=stalled,
    )


def _holder(raw: Any) -> str | None:
    """``host:pid`` of a lease token ``host:pid:random`` read back (None: no holder)."""
    if not isinstance(raw, bytes) or not raw:
        return None
    return raw.decode("utf-8", "replace").rpartition(":")[0][:100] or None


def _lacking(raw: Any, now: Any, current: str | None) -> tuple[list[str], bool]:
    """The fresh reports of processes lacking the current key (``host:pid lacks 'k2'
    (holds k1)``), and whether any is about ``current``. Malformed ones are skipped."""
    if not isinstance(raw, dict) or not isinstance(now, (list, tuple)) or len(now) != 2:
        return [], False
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    out: list[str] = []
    lacked = 0
    for who, value in sorted(raw.items()):
        try:
            rep = orjson.loads(value)
            key, held, at = rep["key"], rep["held"], int(rep["at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if not is_key_id(key) or not isinstance(held, list) or now_ms - at > LACKING_STALE_MS:
            continue
        if key != current:
            continue  # about an older current key: that process has moved on, or will
        lacked += 1
        if len(out) < _MAX_LACKING:
            ids = ", ".join(h for h in held if is_key_id(h)) or "none"
            name = who.decode("utf-8", "replace")[:100]
            out.append(f"{name} lacks {key!r} (holds {ids})")
    if lacked > len(out):
        out.append(f"and {lacked - len(out)} more")
    return out, lacked > 0


#: How to repair each record once deleted.
_FIX_META = "the next initialize() sets the current key from current_key_id"
_FIX_IDS = "every process records its key ids again at initialize()"
_FIX_ROT = "what is still under older keys stays readable; rotate again to re-encrypt it"


def _key_id(raw: bytes | None) -> str | None:
    """A key id read back from Redis; None when absent or not a key id."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    return text if is_key_id(text) else None


async def verify_keys(manager: EncryptionManager, *, refuse: bool = False) -> frozenset[str]:
    """Compare the check value of every key ``manager`` holds with the one recorded for
    its queue under that id (``<prefix>enc:check``; the first process to hold an id
    records it): returns the ids held with other material (a wrong secret here, or in
    the process that recorded it), which the process then neither seals nor opens with
    (``KeyMismatchError``), logging an ERROR once per id. Run at ``initialize`` (with
    ``refuse``: ``KeyMismatchError`` then), ``add_key`` and a process's first use of the
    keys; again at every refresh while an id differs, so that a repair is seen."""
    q, ring = manager.queue, manager.ring
    ids = ring.ids()
    if not ids:  # nothing to compare (an HMGET without fields is refused)
        ring.mismatched = frozenset()
        manager.keys_verified = True
        return ring.mismatched
    key = q.keys.extra(CHECKS)
    client = await q.client()
    pipe = client.pipeline(transaction=False)
    for key_id in ids:
        pipe.hsetnx(key, key_id, ring.check_value(key_id))
    pipe.hmget(key, ids)
    got = await pipe.execute(raise_on_error=False)
    for g in got:
        if isinstance(g, Exception):
            if not wrongtype(g):
                raise g
            from .manager import damaged_record

            raise damaged_record(q.name, key, "it holds another type")
    bad = frozenset(
        k for k, r in zip(ids, got[-1], strict=True) if r != ring.check_value(k).encode()
    )
    for key_id in sorted(bad - ring.mismatched):
        log.error(
            "queue %r: this process holds key %r with other material than the key recorded "
            "under that id for the queue (check value in %s differs): it neither seals nor "
            "opens with it, and defers the jobs under it for a process holding the right "
            "key. Fix the secret configured for %r; if the recorded one is the wrong one, "
            "HDEL %s %s",
            q.name,
            key_id,
            key,
            key_id,
            key,
            key_id,
        )
    ring.mismatched = bad
    manager.keys_verified = True
    if bad and refuse:
        raise KeyMismatchError(
            f"queue {q.name!r}: this process holds key(s) {', '.join(map(repr, sorted(bad)))} "
            "with other material than the keys recorded under those ids for the queue "
            "(their check values differ): fix the secrets configured here (docs/"
            "encryption.md, 'A key id held with other material')",
            min(bad),
        )
    return bad
