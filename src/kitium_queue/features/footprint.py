"""Where a queue's Redis memory goes, by state: ``measure_footprint`` (``kitium-queue
memory``).

For each state (waiting, delayed, pending, active, completed, failed, dlq) it counts the
jobs, picks up to ``samples`` of them at random (``ZRANDMEMBER``; the first parked jobs
for ``pending``) and asks Redis for the memory of each one's hash and log list
(``MEMORY USAGE ... SAMPLES 0``, which needs the ``+memory`` ACL command); the state's
estimate is the average times the count. The queue's own structures (state sets, event stream,
meta, indexes) are measured directly. The work is bounded: at most ``samples`` jobs per
state and one pipelined round trip per state, whatever the queue's size.

Estimates, not an audit: a sample of 50 of a million jobs says what a typical job costs
(payloads of very different sizes widen the error; raise ``samples``). Keys outside the
job records (idempotency keys, a feature's copies) are not counted per state.

A state whose set cannot be read (a key damaged by hand: another Redis type, a parked
count that is no number) is reported with no jobs and named in ``problems``, with how to
repair it; the other states and the structures are measured as usual.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
from redis.exceptions import ResponseError

from ..errors import ConfigurationError
from ..limits import printable
from ..options import to_int
from ..parking import parked_count, parked_ids

if TYPE_CHECKING:
    from ..queue import JobQueue

__all__ = ["QueueFootprint", "StateFootprint", "make_command", "measure_footprint"]

_STATES = (
    ("waiting", "wait"),
    ("delayed", "delayed"),
    ("pending", None),
    ("active", "active"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("dlq", "dlq"),
)
#: Feature structures measured as a whole besides the core's keys (relative to the
#: queue's key prefix).
_FEATURE_STRUCTURES = (
    "parked", "park:timers", "schedules", "subjects", "alerts:log", "alerts:unreported",
    "outbox", "jids",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class StateFootprint:
    """The jobs of one state: ``jobs`` counted, ``sampled`` measured, their hashes and
    logs taking ``sampled_bytes``; ``estimated_bytes`` = average times ``jobs``."""

    state: str
    jobs: int
    sampled: int
    sampled_bytes: int

    @property
    def bytes_per_job(self) -> float:
        return self.sampled_bytes / self.sampled if self.sampled else 0.0

    @property
    def estimated_bytes(self) -> int:
        return round(self.bytes_per_job * self.jobs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "jobs": self.jobs,
            "sampled": self.sampled,
            "bytes_per_job": round(self.bytes_per_job, 1),
            "estimated_bytes": self.estimated_bytes,
        }


@dataclass(frozen=True, slots=True)
class QueueFootprint:
    """A queue's estimated memory: per state (job records) and per structure."""

    queue: str
    states: list[StateFootprint]
    structures: dict[str, int] = field(default_factory=dict)
    #: States that could not be read (a damaged key), and how to repair them.
    problems: list[str] = field(default_factory=list)

    @property
    def jobs_bytes(self) -> int:
        return sum(s.estimated_bytes for s in self.states)

    @property
    def total_bytes(self) -> int:
        return self.jobs_bytes + sum(self.structures.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "states": [s.to_dict() for s in self.states],
            "structures": dict(self.structures),
            "jobs_bytes": self.jobs_bytes,
            "total_bytes": self.total_bytes,
            "problems": list(self.problems),
        }


async def measure_footprint(queue: JobQueue, *, samples: int = 50) -> QueueFootprint:
    """Estimate ``queue``'s memory in Redis (see the module docstring).

    ``samples``: jobs measured per state (1..1000). Raises ``ConfigurationError`` on
    a backend without ``MEMORY USAGE`` (``memory://``).
    """
    n = to_int(samples, "samples", minimum=1, maximum=1000)
    await queue.queries.check("measure_footprint", {"samples": n})
    if queue.connection.is_memory:
        raise ConfigurationError(
            "the memory report needs a Redis server (MEMORY USAGE); memory:// has none"
        )
    client = await queue.client()
    keys = queue.keys
    states: list[StateFootprint] = []
    problems: list[str] = []
    for state, part in _STATES:
        try:
            if part is None:
                count = await parked_count(queue.ctx)
                ids = await parked_ids(queue.ctx, min(n, count), 0) if count else []
            else:
                set_key = getattr(keys, part)
                count = int(await client.zcard(set_key))
                raw = await client.zrandmember(set_key, n) if count else []
                ids = [
                    r.decode("utf-8", "replace") if isinstance(r, bytes) else str(r)
                    for r in raw or []
                ]
        except (ResponseError, ValueError, TypeError) as exc:
            if isinstance(exc, ResponseError) and not str(exc).startswith("WRONGTYPE"):
                raise
            where = keys.meta if part is None else getattr(keys, part)
            problems.append(
                f"{state}: not measured, {where} is damaged ({type(exc).__name__}: "
                f"{printable(str(exc))[:120]}); a key written by hand? Delete or repair it"
            )
            states.append(StateFootprint(state, 0, 0, 0))
            continue
        sampled = used = 0
        if ids:
            pipe = client.pipeline(transaction=False)
            for jid in ids:
                # SAMPLES 0: every field counted. With Redis' default sample of 5
                # fields, a hash whose payload is not among them looks a few hundred
                # bytes long (job hashes have a few dozen fields at most).
                pipe.memory_usage(keys.job(jid), samples=0)
                pipe.memory_usage(keys.logs(jid), samples=0)
            try:
                sizes = await pipe.execute()
            except ResponseError as exc:
                raise ConfigurationError(f"MEMORY USAGE refused: {exc}") from None
            for i in range(0, len(sizes), 2):
                if sizes[i] is None:  # the job went meanwhile
                    continue
                sampled += 1
                used += int(sizes[i]) + int(sizes[i + 1] or 0)
        states.append(StateFootprint(state, count, sampled, used))
    # The core's keys (state sets, events, meta, counters) and the features' structures.
    names = [k[len(keys.base) :] for k in keys.all] + list(_FEATURE_STRUCTURES)
    pipe = client.pipeline(transaction=False)
    for suffix in names:
        pipe.memory_usage(keys.extra(suffix))
    structures = {
        suffix: int(size)
        for suffix, size in zip(names, await pipe.execute(), strict=True)
        if size is not None
    }
    return QueueFootprint(queue.name, states, structures, problems)


def make_command(
    with_queue: Callable[..., Any], redis_option: Callable[[Any], Any], row: Callable[..., str]
) -> click.Command:
    """The ``memory`` command, using the CLI's queue loader, ``--redis`` and rows."""

    @click.command("memory")
    @click.argument("app")
    @click.option(
        "-s", "--samples", default=50, show_default=True, help="Jobs measured per state (1-1000)."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @redis_option
    def memory(app: str, samples: int, as_json: bool, redis: str | None) -> None:
        """Estimate APP's Redis memory by state (MEMORY USAGE of up to SAMPLES jobs per
        state, times the state's count) and of its structures (sets, event stream)."""

        async def act(q: Any) -> QueueFootprint:
            return await measure_footprint(q, samples=samples)

        fp: QueueFootprint = with_queue(app, redis, act)
        if as_json:
            click.echo(json.dumps(fp.to_dict(), indent=2))
            return
        for s in fp.states:
            click.echo(
                row(
                    s.state,
                    f"jobs={s.jobs}",
                    f"sampled={s.sampled}",
                    f"bytes/job={s.bytes_per_job:.0f}",
                    f"estimated={_size(s.estimated_bytes)}",
                )
            )
        for name, size in fp.structures.items():
            click.echo(row(f"[{name}]", _size(size)))
        click.echo(row("total", _size(fp.total_bytes)))
        for problem in fp.problems:
            click.echo(row("problem", problem))

    return memory


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
