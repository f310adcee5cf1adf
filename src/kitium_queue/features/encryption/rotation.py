"""The rotation pass: re-encrypt what is stored under any key but the current one.

After ``rotate_key`` the pass (a leader-only service, or ``run_rotation``) waits
``rotation_grace_ms`` (every process has then seen the new key), then sweeps in rounds.
A round walks every *target* in bounded pages (``rotation_batch`` records): the jobs of
``active``, ``wait``, every parked set, ``delayed``, ``failed``, ``dlq`` and
``completed`` (their data ``d``, result ``r``, sealed failure texts ``e``, ``le``,
``tb``, sealed progress ``pg`` and sealed log lines), the schedules' data, then the results
kept under idempotency keys after their job was removed (effectively-once), and the
copies of job values other features declare (``kitium_queue.copies``: ``copies.py``,
added by the manager). Each
ciphertext under another key is opened and sealed again under the current key with the
same binding, and written back by ``enc_swap.lua``: only if the value is unchanged and
the job is not active (an active job's result is written under the new key when it
ends; its data is taken in a later round). A job's log list is compared and rebuilt
whole, also only while its job is not active. A round is *clean* when it finds nothing to
re-encrypt and meets no active or changed record; the pass ends after two clean rounds
in a row. Progress is kept in ``<prefix>enc:rotation`` (``RotationStatus``).

More kinds of stored ciphertext join the pass by adding a ``RotationTarget`` to
``RotationPass.targets`` (``add_target``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from redis.exceptions import ResponseError

from ...limits import get_logger
from ...options import to_int
from ..idempotency.manager import RESULT_PREFIX
from .crypto import Binding, EncryptionError, KeyNotHeldError, is_envelope
from .failures import is_sealed_text, parse_sealed, sealed_text
from .progresslogs import pack_lines, unpack_lines
from .status import RotationStatus, read_status, wrongtype

if TYPE_CHECKING:
    from .manager import EncryptionManager

__all__ = [
    "Cell",
    "JobTarget",
    "RotationPass",
    "RotationStatus",
    "RotationTarget",
    "ScheduleTarget",
    "read_status",
]

#: Most groups one ``enc_swap`` call takes (its ``BATCH_MAX``).
_SWAP_MAX = 1000

log = get_logger(__name__)

_MAX_PROBLEMS = 5


@dataclass(slots=True)
class Cell:
    """One stored ciphertext: ``key`` (relative to the queue's prefix), hash ``field``,
    the raw stored value, how to bind it (from the envelope's ``for``), whether to skip
    it while its record is active, and a label for reports (``job 42 data``). ``text``:
    the value is a sealed failure text (``failures.sealed_text``), not an envelope
    stored through the queue's serializer."""

    key: str
    field: str
    raw: bytes
    bind: Callable[[str], Binding]
    guard: bool
    label: str
    text: bool = False
    #: The sealed text is stored as a JSON string (a progress value, ``pg``).
    json: bool = False
    #: ``raw`` is a whole log list (``progresslogs.pack_lines``), ``key`` the list and
    #: ``field`` its job's record, which must not be active.
    lines: bool = False


class RotationTarget(Protocol):
    """A kind of stored ciphertext the pass re-encrypts."""

    name: str

    def pages(self, client: Any, batch: int) -> AsyncIterator[list[Cell]]:
        """Every encrypted cell, in pages of about ``batch`` records."""
        ...

    async def size(self, client: Any) -> int:
        """About how many records ``pages`` walks (for the progress bar)."""
        ...


def _count(value: Any) -> int:
    """A count read back from Redis; 0 for a damaged one (a progress figure only)."""
    if isinstance(value, int):
        return value
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


async def _zscan(client: Any, key: str, batch: int) -> AsyncIterator[list[bytes]]:
    cursor = 0
    while True:
        try:
            cursor, items = await client.zscan(key, cursor, count=batch)
        except ResponseError as exc:
            if not wrongtype(exc):
                raise
            # A set damaged by hand cannot be walked: the rest of the pass goes on.
            log.warning("encryption rotation: %s holds another type; its jobs are skipped", key)
            return
        if items:
            yield [m for m, _ in items]
        if cursor == 0:
            return


def _encrypted(raw_opts: bytes | None, encrypt_all: bool) -> bool:
    if encrypt_all:
        return True
    if not raw_opts or b"encrypted" not in raw_opts:
        return False
    try:
        opts = orjson.loads(raw_opts)
    except orjson.JSONDecodeError:
        return False
    return isinstance(opts, dict) and opts.get("encrypted") is True


#: Sealed failure texts of a job record: field, and the part it is bound to.
_TEXT_FIELDS = (("e", "error"), ("le", "error"), ("tb", "traceback"))
_JOB_FIELDS = ("n", "o", "d", "r", *(f for f, _ in _TEXT_FIELDS), "pg")


class JobTarget:
    """Jobs in every state set: their data, (completed) result, sealed failure texts
    (reason, last error, traceback), sealed progress and sealed log lines."""

    name = "jobs"
    _SETS = ("active", "wait", "delayed", "failed", "dlq", "completed")

    def __init__(self, manager: EncryptionManager) -> None:
        self.manager = manager

    async def size(self, client: Any) -> int:
        keys = self.manager.queue.keys
        pipe = client.pipeline(transaction=False)
        for s in self._SETS:
            pipe.zcard(getattr(keys, s))
        pipe.hget(keys.meta, "parked")
        return sum(_count(v) for v in await pipe.execute(raise_on_error=False))

    async def _set_keys(self, client: Any, batch: int) -> AsyncIterator[str]:
        keys = self.manager.queue.keys
        yield keys.active
        yield keys.wait
        async for blockers in _zscan(client, keys.parked_index, batch):
            for b in blockers:
                yield keys.parked(b.decode("utf-8", "surrogateescape"))
        for s in self._SETS[2:]:
            yield getattr(keys, s)

    async def pages(self, client: Any, batch: int) -> AsyncIterator[list[Cell]]:
        m = self.manager
        q = m.queue
        async for set_key in self._set_keys(client, batch):
            async for ids in _zscan(client, set_key, batch):
                pipe = client.pipeline(transaction=False)
                for i in ids:
                    pipe.hmget(q.keys.job(i.decode("utf-8", "surrogateescape")), *_JOB_FIELDS)
                rows = await pipe.execute(raise_on_error=False)
                cells: list[Cell] = []
                named: list[tuple[str, str]] = []  # encrypted jobs: their log lists next
                for i, row in zip(ids, rows, strict=True):
                    if isinstance(row, Exception):  # a job key of another type: skipped
                        if not wrongtype(row):
                            raise row
                        continue
                    n, o, d, r, *texts, pg = row
                    if not _encrypted(o, m.encrypt_all):
                        continue
                    jid = i.decode("utf-8", "surrogateescape")
                    name = (n or b"").decode("utf-8", "surrogateescape")
                    named.append((jid, name))
                    if pg and pg.startswith(b'"(sealed: key '):  # progresslogs.py
                        bind = partial(_bind, q.name, jid, name, "progress")
                        label = f"job {jid} progress"
                        cells.append(Cell(f"job:{jid}", "pg", pg, bind, True, label, json=True))
                    if d:
                        cells.append(
                            Cell(
                                f"job:{jid}",
                                "d",
                                d,
                                partial(_data, q.name, jid, name),
                                True,
                                f"job {jid} data",
                            )
                        )
                    if r:
                        cells.append(
                            Cell(
                                f"job:{jid}",
                                "r",
                                r,
                                partial(_bind, q.name, jid, name, "result"),
                                True,
                                f"job {jid} result",
                            )
                        )
                    for (fld, part), raw in zip(_TEXT_FIELDS, texts, strict=True):
                        if is_sealed_text(raw):  # a failure text (failures.py)
                            cells.append(
                                Cell(
                                    f"job:{jid}",
                                    fld,
                                    raw,
                                    partial(_bind, q.name, jid, name, part),
                                    True,
                                    f"job {jid} {fld}",
                                    text=True,
                                )
                            )
                yield cells + await self._log_cells(client, named)

    async def _log_cells(self, client: Any, named: list[tuple[str, str]]) -> list[Cell]:
        """A cell for each of these jobs' log lists holding a sealed line."""
        q = self.manager.queue
        pipe = client.pipeline(transaction=False)
        for jid, _ in named:
            pipe.lrange(q.keys.logs(jid), 0, -1)
        cells: list[Cell] = []
        if not named:
            return cells
        replies = await pipe.execute(raise_on_error=False)
        for (jid, name), lines in zip(named, replies, strict=True):
            if isinstance(lines, Exception):  # a log key of another type: skipped
                if not wrongtype(lines):
                    raise lines
                continue
            if any(is_sealed_text(line) for line in lines):
                bind = partial(_bind, q.name, jid, name, "log")
                packed = pack_lines(lines)
                label = f"job {jid} log"
                cells.append(
                    Cell(f"logs:{jid}", f"job:{jid}", packed, bind, True, label, lines=True)
                )
        return cells


def _data(queue: str, job_id: str, name: str, scope: str) -> Binding:
    from .manager import data_binding

    return data_binding(queue, job_id, name, scope)


def _bind(queue: str, owner: str, name: str, part: str, scope: str) -> Binding:
    return Binding(scope, queue, owner, name, part)


class ScheduleTarget:
    """The data of schedules (the template every tick's job copies)."""

    name = "schedules"

    def __init__(self, manager: EncryptionManager) -> None:
        self.manager = manager

    async def size(self, client: Any) -> int:
        pipe = client.pipeline(transaction=False)
        pipe.zcard(self.manager.queue.keys.schedules)
        return _count((await pipe.execute(raise_on_error=False))[0])

    async def pages(self, client: Any, batch: int) -> AsyncIterator[list[Cell]]:
        m = self.manager
        q = m.queue
        async for ids in _zscan(client, q.keys.schedules, batch):
            pipe = client.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(q.keys.schedule(i.decode("utf-8", "surrogateescape")), "n", "o", "d")
            rows = await pipe.execute(raise_on_error=False)
            cells: list[Cell] = []
            for i, row in zip(ids, rows, strict=True):
                if isinstance(row, Exception):  # a schedule key of another type: skipped
                    if not wrongtype(row):
                        raise row
                    continue
                n, o, d = row
                if not d or not _encrypted(o, m.encrypt_all):
                    continue
                sid = i.decode("utf-8", "surrogateescape")
                name = (n or b"").decode("utf-8", "surrogateescape")
                cells.append(
                    Cell(
                        f"schedule:{sid}",
                        "d",
                        d,
                        partial(_bind, q.name, sid, name, "data"),
                        False,
                        f"schedule {sid} data",
                    )
                )
            yield cells


class StoredResultTarget:
    """Results kept under idempotency keys (``idem-r:<key>``: ``features.idempotency``),
    which outlive their job: bound to the job they came from, like its ``r``."""

    name = "stored-results"

    def __init__(self, manager: EncryptionManager) -> None:
        self.manager = manager

    def _match(self) -> str:
        return self.manager.queue.keys.extra(RESULT_PREFIX + "*")

    async def size(self, client: Any) -> int:
        n = 0
        async for _ in client.scan_iter(match=self._match(), count=500):
            n += 1
        return n

    async def pages(self, client: Any, batch: int) -> AsyncIterator[list[Cell]]:
        q = self.manager.queue
        base = len(q.keys.extra(""))
        keys: list[bytes] = []
        async for k in client.scan_iter(match=self._match(), count=batch):
            keys.append(k)
            if len(keys) >= batch:
                yield await self._cells(client, keys, base)
                keys = []
        if keys:
            yield await self._cells(client, keys, base)

    async def _cells(self, client: Any, keys: list[bytes], base: int) -> list[Cell]:
        q = self.manager.queue
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(k, "id", "n", "r")
        rows = await pipe.execute(raise_on_error=False)
        cells: list[Cell] = []
        for k, row in zip(keys, rows, strict=True):
            if isinstance(row, Exception):  # not a stored result (another type): skipped
                if not wrongtype(row):
                    raise row
                continue
            jid, n, r = row
            if not r or b"kqe" not in r:
                continue  # a result stored in clear (its job was not encrypted)
            try:
                if not is_envelope(q.serializer.loads(r)):
                    continue
            except Exception:
                continue
            rel = k.decode("utf-8", "surrogateescape")[base:]
            job = (jid or b"").decode("utf-8", "surrogateescape")
            name = (n or b"").decode("utf-8", "surrogateescape")
            cells.append(
                Cell(
                    rel,
                    "r",
                    r,
                    partial(_bind, q.name, job, name, "result"),
                    False,
                    f"stored result of job {job}",
                )
            )
        return cells


@dataclass(slots=True)
class _Round:
    scanned: int = 0
    found: int = 0
    conflicts: int = 0
    undecryptable: int = 0
    problems: list[str] = field(default_factory=list)


class RotationPass:
    """Runs the re-encryption pass of the latest rotation (see the module docstring)."""

    def __init__(
        self, manager: EncryptionManager, *, batch: int = 200, poll_ms: int = 1000
    ) -> None:
        self.manager = manager
        self.batch = to_int(batch, "rotation_batch", minimum=1, maximum=1000)
        self.poll_ms = poll_ms
        self.targets: list[RotationTarget] = [
            JobTarget(manager),
            ScheduleTarget(manager),
            StoredResultTarget(manager),
        ]

    def add_target(self, target: RotationTarget) -> None:
        """Re-encrypt one more kind of stored ciphertext in every round."""
        self.targets.append(target)

    async def serve(self, term: int) -> None:
        """The leader-only service's body: run the pass whenever a rotation is running.

        Raises ``KeyNotHeldError`` when this process does not hold the queue's current
        key (the pass seals under it): the leader steps down for a process that holds
        it (``leading.RotationService``)."""
        while True:
            st = await read_status(self.manager.queue)
            if st.state == "running":
                try:
                    await self.run()
                except (asyncio.CancelledError, KeyNotHeldError):
                    raise
                except Exception:
                    log.exception(
                        "queue %s: encryption rotation pass failed; retrying",
                        self.manager.queue.name,
                    )
            await asyncio.sleep(self.poll_ms / 1000)

    async def _save(self, n: int, **values: Any) -> None:
        q = self.manager.queue
        client = await q.client()
        values["updated_at"] = int(time.time() * 1000)
        key = q.keys.extra("enc:rotation")
        # Only while the record is still this rotation's (a newer rotate_key resets it).
        if await client.hget(key, "n") == str(n).encode():
            await client.hset(key, mapping=values)

    async def _add(self, n: int, field_name: str, by: int) -> None:
        """Add ``by`` to a counter of rotation ``n``'s record (while it is still its)."""
        if by:
            client = await self.manager.queue.client()
            key = self.manager.queue.keys.extra("enc:rotation")
            if await client.hget(key, "n") == str(n).encode():
                try:
                    await client.hincrby(key, field_name, by)
                except ResponseError as exc:  # not an integer (damaged), or overflowing
                    if wrongtype(exc):
                        raise
                    log.warning(
                        "queue %s: encryption rotation counter %s was damaged (%s); it "
                        "starts again from this step's count",
                        self.manager.queue.name,
                        field_name,
                        exc,
                    )
                    await client.hset(key, field_name, by)

    async def run(self) -> RotationStatus:
        """Run the latest rotation's pass to its end (returns at once when none runs)."""
        m = self.manager
        st = await read_status(m.queue)
        if st.state != "running":
            return st
        n = st.rotation
        wait_ms = (st.rotated_at or 0) + m.rotation_grace_ms - int(time.time() * 1000)
        if wait_ms > 0:
            # Never longer than the grace itself: a rotated_at in the future (a damaged
            # record, a skewed clock) must not hold the pass back for ever.
            await asyncio.sleep(min(wait_ms, m.rotation_grace_ms) / 1000)
        # A damaged count (by hand) must not end the pass before it swept anything.
        clean = st.clean_rounds if st.clean_rounds < 2 else 0
        rnd = st.round
        while clean < 2:
            rnd += 1
            client = await m.queue.client()
            total = sum([await t.size(client) for t in self.targets])
            await self._save(n, round=rnd, scanned=0, total=total, conflicts=0)
            res = await self._round(n, rnd, total)
            if res is None:  # another rotation started: it has its own pass
                return await read_status(m.queue)
            quiet = res.found == 0 and res.conflicts == 0
            clean = clean + 1 if quiet else 0
            await self._save(
                n,
                clean_rounds=clean,
                undecryptable=res.undecryptable,
                problems="; ".join(res.problems[:_MAX_PROBLEMS]),
            )
            if res.conflicts and res.found == res.conflicts:
                await asyncio.sleep(0.2)  # only active jobs left: let them finish
        await self._save(n, state="done", finished_at=int(time.time() * 1000))
        final = await read_status(m.queue)
        log.info(
            "queue %s: encryption rotation %d done (%d re-encrypted, %d undecryptable)",
            m.queue.name,
            n,
            final.reencrypted,
            final.undecryptable,
        )
        return final

    async def _round(self, n: int, rnd: int, total: int) -> _Round | None:
        m = self.manager
        q = m.queue
        res = _Round()
        target_key = await m.current_key_id(refresh=True)
        client = await q.client()
        for target in self.targets:
            async for cells in target.pages(client, self.batch):
                # Records, as size() counts (a log list goes with its job's record).
                res.scanned += len({c.key for c in cells if not c.lines})
                groups: list[Any] = []
                for c in cells:
                    reseal = self._reseal_lines if c.lines else self._reseal
                    new = reseal(c, target_key, res)
                    guard = "L" if c.lines else "a" if c.guard else "-"
                    if new is not None:
                        groups += [c.key, c.field, c.raw, new, guard]
                # A page of records can hold more cells (data and result) than one
                # enc_swap call takes: several calls, each checked for a newer rotation.
                swapped = 0
                for at in range(0, len(groups), _SWAP_MAX * 5):
                    reply = await q.run("enc_swap", [str(n), *groups[at : at + _SWAP_MAX * 5]])
                    if reply[0] == b"stale":
                        return None
                    for code in reply[1]:
                        if int(code) != 1:
                            res.conflicts += 1
                        else:
                            swapped += 1
                await self._save(n, scanned=res.scanned, conflicts=res.conflicts)
                # Added, not set: a pass run by hand beside the leader's (run_rotation)
                # must not overwrite the count of the other's swaps.
                await self._add(n, "reencrypted", swapped)
        return res

    def _reseal_lines(self, cell: Cell, target_key: str, res: _Round) -> bytes | None:
        """A log list's lines, each sealed one under ``target_key`` (packed), or None
        when none changes. The list counts as one cell found, as its swap counts as one
        (a round that finds only active jobs' cells then waits: ``run``)."""
        lines = unpack_lines(cell.raw)
        changed, found = False, res.found
        for n, line in enumerate(lines):
            if is_sealed_text(line):
                one = Cell(cell.key, cell.field, line, cell.bind, True, cell.label, text=True)
                new = self._reseal(one, target_key, res)
                if new is not None:
                    lines[n], changed = new, True
        res.found = found + changed
        return pack_lines(lines) if changed else None

    def _reseal(self, cell: Cell, target_key: str, res: _Round) -> bytes | None:
        """The cell's value under ``target_key``, or None when it is there already (or
        cannot be opened: counted in ``res``)."""
        q = self.manager.queue
        if cell.json:
            try:
                text = orjson.loads(cell.raw)
            except orjson.JSONDecodeError:
                text = None
            env: Any = parse_sealed(text) if isinstance(text, str) else None
        elif cell.text:
            env = parse_sealed(cell.raw)
        else:
            try:
                env = q.serializer.loads(cell.raw)
            except Exception:
                env = None
        if not is_envelope(env):
            res.undecryptable += 1
            res.problems.append(f"{cell.label}: not an envelope")
            return None
        if env.get("kid") == target_key:
            return None
        res.found += 1
        try:
            binding = cell.bind(str(env.get("for")))
            plain = self.manager.ring.open(env, binding)
            sealed = self.manager.ring.seal(plain, target_key, binding)
        except EncryptionError as exc:
            res.found -= 1
            res.undecryptable += 1
            res.problems.append(f"{cell.label}: {exc}")
            return None
        if cell.json:
            return orjson.dumps(sealed_text(sealed).decode())
        return sealed_text(sealed) if cell.text else q.serializer.dumps(sealed, "envelope")
