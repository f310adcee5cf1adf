"""Replica-acknowledged writes: ``WAIT`` after an enqueue or an outcome, before either is
acknowledged.

Redis replicates asynchronously: ``add_job`` returns once the primary holds the job,
and a primary lost a moment later (SIGKILL, a host gone) takes with it what its replicas
had not received yet; Sentinel then promotes a replica without those jobs. With

::

    ReplicaAcks(queue, replicas=1, timeout_ms=500)

every enqueue of the queue is followed, on the same connection and in the same round
trip, by ``WAIT 1 500``: ``add_job`` returns only once one replica acknowledged the job
(the write and everything written before it on that connection), or raises
``ReplicaAckError`` when fewer replicas answered within the timeout. The job is then on
the primary (a retry with the same ``job_id`` / ``idempotency_key`` does not add it
twice); what is not guaranteed is that it survives the primary's loss.

Per job: ``add_job(..., wait_replicas=2, wait_timeout_ms=1000)`` overrides the queue's
setting for that enqueue (``wait_replicas=0``: do not wait). Jobs whose ``add_job`` calls
share a round trip share one ``WAIT`` (the most replicas and the longest timeout asked
for); each caller is judged by what it asked for.

Outcomes (``outcomes=True``, the default): each worker round that records outcomes ends
with the same ``WAIT``, so the ``job-completed`` handlers and other ``finished``
subscribers of this process run only once the outcomes reached the replicas. When fewer
answer in time, the outcomes stay recorded (a recorded outcome cannot be taken back);
the worker logs it (at most every 10 s) and reports a ``ReplicaAckError`` on the
``queue_error`` hook. An outcome lost in a failover leaves its job leased on the new
primary: it runs again once the lease expires (at-least-once, as after a worker crash).

``WAIT`` does not make Redis strongly consistent (a replica may acknowledge and still
lose the write if it crashes too, and Sentinel may promote a replica that did not
acknowledge when several are lagging); it closes the common gap: a primary that dies
right after acknowledging. See docs/replicas.md for the cost in latency (one
replication round trip per enqueue) and what the option does and does not promise.

Not available on ``memory://`` (no replicas) or on Redis Cluster clients (``WAIT`` must
run on the node that took the write; on a cluster use the per-shard replicas with
``min-replicas-to-write`` on the server instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError, ReplicaAckError
from ...jobspec import OptionSpec
from ...options import to_int, to_ms
from ...serverinfo import node_info

if TYPE_CHECKING:
    from ...queue import JobQueue

__all__ = ["MAX_WAIT_TIMEOUT_MS", "ReplicaAcks", "replication_status"]

FEATURE = "replica-acks"
#: Most replicas one write may ask for.
MAX_REPLICAS = 64
#: Longest wait for replicas (ms): well inside the reply deadline of one exchange
#: (``scripts.REPLY_TIMEOUT_S``), so a slow replica never looks like a dead Redis.
MAX_WAIT_TIMEOUT_MS = 10_000


def _replicas(value: Any, section: str) -> int:
    return to_int(value, f"{section}: wait_replicas", minimum=0, maximum=MAX_REPLICAS)


def _timeout(value: Any, section: str) -> int:
    return to_ms(value, f"{section}: wait_timeout_ms", minimum=1, maximum=MAX_WAIT_TIMEOUT_MS)


class ReplicaAcks:
    """Replica-acknowledged writes on ``queue`` (see the module docstring).

    Args:
        queue: the queue.
        replicas: replicas that must acknowledge each enqueue (and outcome) before it is
            acknowledged; 0 waits for nothing unless a job asks (``wait_replicas``).
        timeout_ms: how long to wait for them (ms or timedelta, 1 .. 10,000).
        outcomes: also wait after the outcomes a worker of this process records.

    Raises ``ConfigurationError`` for values out of range, and on ``memory://``.
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        replicas: int = 1,
        timeout_ms: Any = 500,
        outcomes: bool = True,
    ) -> None:
        if queue.connection.is_memory:
            raise ConfigurationError(
                f"queue {queue.name!r}: replica-acknowledged writes need a Redis primary "
                "with replicas; memory:// has none"
            )
        if not isinstance(outcomes, bool):
            raise ConfigurationError(f"outcomes must be True or False, got {outcomes!r}")
        self.queue = queue
        self.replicas = _replicas(replicas, "ReplicaAcks")
        self.timeout_ms = _timeout(timeout_ms, "ReplicaAcks")
        self.outcomes = outcomes
        queue.jobspec.declare(
            OptionSpec(
                "wait_replicas",
                FEATURE,
                _replicas,
                self.replicas,
                stored=False,
                doc="replicas that must acknowledge this enqueue (WAIT)",
            )
        )
        queue.jobspec.declare(
            OptionSpec(
                "wait_timeout_ms",
                FEATURE,
                _timeout,
                self.timeout_ms,
                stored=False,
                doc="how long add_job waits for them (ms)",
            )
        )
        queue.set_write_barrier(self)

    def close(self) -> None:
        """Stop waiting for replicas on this queue (the options stay declared: jobs
        that give them are accepted and wait for nothing more than they ask)."""
        if self.queue.write_barrier is self:
            self.queue.set_write_barrier(None)

    # ------------------------------------------------------------------ WriteBarrier
    def _wanted(self, opts: Mapping[str, Any]) -> tuple[int, int]:
        # Values reached the producer through the option registry (checked there).
        n = opts.get("wait_replicas")
        t = opts.get("wait_timeout_ms")
        return (
            self.replicas if n is None else _replicas(n, "job"),
            self.timeout_ms if t is None else _timeout(t, "job"),
        )

    def for_enqueue(self, options: Sequence[Mapping[str, Any]]) -> Sequence[Any] | None:
        """``WAIT <most replicas asked> <longest timeout asked>``, or None."""
        most, longest = 0, 0
        for opts in options:
            n, t = self._wanted(opts)
            if n > most:
                most = n
            if n and t > longest:
                longest = t
        return ("WAIT", most, longest) if most else None

    def check_enqueue(
        self, command: Sequence[Any], reply: Any, options: Sequence[Mapping[str, Any]]
    ) -> list[BaseException | None]:
        """Per job: None, or a ``ReplicaAckError`` when fewer replicas than it asked for
        acknowledged."""
        got = _count(reply)
        out: list[BaseException | None] = []
        for opts in options:
            n, _ = self._wanted(opts)
            out.append(None if got >= n else self._error("the job", got, n, command, reply))
        return out

    def for_outcomes(self) -> Sequence[Any] | None:
        """``WAIT <replicas> <timeout>`` after a round's outcomes, or None."""
        if not self.outcomes or not self.replicas:
            return None
        return ("WAIT", self.replicas, self.timeout_ms)

    def check_outcomes(
        self, command: Sequence[Any], reply: Any, count: int
    ) -> BaseException | None:
        """None, or the ``ReplicaAckError`` reported for outcomes not confirmed."""
        got = _count(reply)
        if got >= self.replicas:
            return None
        return self._error(f"{count} outcome(s)", got, self.replicas, command, reply)

    def _error(
        self, what: str, got: int, wanted: int, command: Sequence[Any], reply: Any
    ) -> ReplicaAckError:
        timeout = int(command[2])
        why = (
            f"WAIT failed: {reply}"
            if isinstance(reply, BaseException)
            else f"{got} of {wanted} replica(s) acknowledged within {timeout} ms"
        )
        return ReplicaAckError(
            f"queue {self.queue.name!r}: {what} was written on the Redis primary, but "
            f"{why}. It is in the queue; what is not guaranteed is that it survives a "
            "failover to a replica. Check the replicas (kitium-queue replicas --redis ...) "
            "or raise wait_timeout_ms; retrying with the same job_id or idempotency_key "
            "adds nothing twice",
            replicas=got,
            required=wanted,
            timeout_ms=timeout,
        )


def _count(reply: Any) -> int:
    if isinstance(reply, BaseException):
        return 0
    try:
        return int(reply)
    except (TypeError, ValueError):
        return 0


async def replication_status(queue: JobQueue) -> dict[str, Any]:
    """The primary's view of its replicas (``INFO replication``): role, connected
    replicas and, per replica, its address, state and lag in bytes and seconds behind
    the primary's offset (for the CLI's ``replicas`` command and health pages)."""
    client = await queue.client()
    info = await node_info(client, "replication", queue.keys.meta)  # Cluster: its node
    offset = int(info.get("master_repl_offset", 0) or 0)
    replicas = []
    for i in range(int(info.get("connected_slaves", 0) or 0)):
        raw = info.get(f"slave{i}")
        if isinstance(raw, str):  # redis-py parses "ip=..,port=.." into a dict mostly
            raw = dict(part.split("=", 1) for part in raw.split(",") if "=" in part)
        if not isinstance(raw, dict):
            continue
        r_off = int(raw.get("offset", 0) or 0)
        replicas.append(
            {
                "address": f"{raw.get('ip', '?')}:{raw.get('port', '?')}",
                "state": str(raw.get("state", "?")),
                "lag_bytes": max(0, offset - r_off),
                "lag_s": int(raw.get("lag", 0) or 0),
            }
        )
    return {
        "role": str(info.get("role", "?")),
        "connected_replicas": len(replicas),
        "replicas": replicas,
        "min_replicas_to_write": info.get("min_slaves_good_slaves"),
    }
