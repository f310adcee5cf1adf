"""``CopyTarget``: the rotation pass's target for copies of job values that features
keep under a job's id and declare with ``kitium_queue.copies.declare_copies`` (the
workflows feature: a cancelled step's data, a finished step's result and a failed step's
reason in ``dep:<id>``).

Each declared hash is walked with ``SCAN`` in pages of ``rotation_batch`` keys; a field
holding an envelope is re-encrypted with the binding of the job value it copies (the job
id from the key, the job name from the declared name field, else from the job's own
record); a copy of a failure reason (part ``error``) is re-sealed likewise when it holds a
sealed text (``failures.is_sealed_text``; a clear one, or the feature's own marker, is
left). A copy whose job name is known nowhere cannot be opened: it is left as it is and
counted undecryptable, with the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any

from ...copies import CopyKind, copies_of
from .crypto import is_envelope
from .failures import is_sealed_text
from .rotation import Cell, _bind, _data
from .status import wrongtype

if TYPE_CHECKING:
    from .manager import EncryptionManager

__all__ = ["CopyTarget"]

_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def _text(b: bytes | None) -> str:
    return (b or b"").decode("utf-8", "surrogateescape")


class CopyTarget:
    """Copies of job data, results and failure reasons declared on the queue
    (``copies_of``)."""

    name = "copies"

    def __init__(self, manager: EncryptionManager) -> None:
        self.manager = manager

    def _match(self, kind: CopyKind) -> str:
        return self.manager.queue.keys.extra(kind.key_prefix.translate(_GLOB) + "*")

    async def size(self, client: Any) -> int:
        n = 0
        for kind in copies_of(self.manager.queue):
            async for _ in client.scan_iter(match=self._match(kind), count=500):
                n += 1
        return n

    async def pages(self, client: Any, batch: int) -> AsyncIterator[list[Cell]]:
        for kind in copies_of(self.manager.queue):
            keys: list[bytes] = []
            async for k in client.scan_iter(match=self._match(kind), count=batch):
                keys.append(k)
                if len(keys) >= batch:
                    yield await self._cells(client, kind, keys)
                    keys = []
            if keys:
                yield await self._cells(client, kind, keys)

    def _sealed(self, raw: bytes, part: str) -> bool:
        """Whether copy ``raw`` of a job's ``part`` is one the rotation re-seals."""
        if part == "error":
            return is_sealed_text(raw)
        if b"kqe" not in raw:
            return False
        try:
            return is_envelope(self.manager.queue.serializer.loads(raw))
        except Exception:
            return False

    async def _cells(self, client: Any, kind: CopyKind, keys: list[bytes]) -> list[Cell]:
        q = self.manager.queue
        base = len(q.keys.extra(""))
        start = base + len(kind.key_prefix)
        names = [f.name_field for f in kind.fields if f.name_field]
        wanted = list(dict.fromkeys([f.field for f in kind.fields] + names))
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(k, *wanted)
            pipe.hget(q.keys.job(_text(k)[start:]), "n")
        rows = await pipe.execute(raise_on_error=False)
        cells: list[Cell] = []
        for at, k in enumerate(keys):
            row, job_name = rows[2 * at], rows[2 * at + 1]
            if isinstance(row, Exception):  # a record of another type: skipped
                if not wrongtype(row):
                    raise row
                continue
            if isinstance(job_name, Exception):
                job_name = None
            got = dict(zip(wanted, row, strict=True))
            rel = _text(k)[base:]
            jid = _text(k)[start:]
            for f in kind.fields:
                raw = got.get(f.field)
                if not raw or not self._sealed(raw, f.part):
                    continue  # no copy, one in clear (its job was not encrypted), a marker
                own = got.get(f.name_field) if f.name_field else None
                name = _text(own if f.name_field else job_name) or _text(job_name)
                bind = (
                    partial(_data, q.name, jid, name)
                    if f.part == "data"
                    else partial(_bind, q.name, jid, name, f.part)
                )
                # The record is no job hash: nothing in it is 'active' (guard off); the
                # swap is compare-and-set on the value read.
                label = f"{kind.feature} copy {kind.key_prefix}{jid} {f.field} (job {f.part})"
                if own is None and job_name is None:
                    label += ": the job's record, with the name it is bound to, is gone"
                text = f.part == "error"
                cells.append(Cell(rel, f.field, raw, bind, False, label, text=text))
        return cells
