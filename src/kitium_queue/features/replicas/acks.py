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
for); each caller is judged by what it asked for. The producer batches the calls that
wait apart from those that do not (``coalesce.py``), so a call that does not wait is never
held by another's ``WAIT``.

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

Duplicates: on Redis 7.2+ (and Valkey) ``WAIT`` waits for the connection's last write
that reached the replication stream, and an ``add_job`` that finds its job there already
writes nothing: its ``WAIT`` would confirm whatever that connection wrote last, not the job
it found (written by an earlier call that was refused with ``ReplicaAckError``, or by
another producer). A duplicate ``idempotency_key`` therefore rewrites its record as it is
(same value, same expiry; the ``duplicate`` Lua slot), and a duplicate ``job_id``'s call
extends the expiry of the chosen-id set (``enqueue.lua``; skipped within the millisecond
of the set's last write): the ``WAIT`` then covers the job found. An id added with
``job_id_window=False`` has no such write (docs/replicas.md).

Refused on ``memory://`` (no replicas) and on Redis Cluster clients: there redis-py sends
``WAIT`` to every primary and adds up their answers, so replicas of other shards would
confirm a write their own shard's replicas never got (on a cluster use the per-shard
replicas with ``min-replicas-to-write`` on the server instead). Refused too when
``outcomes`` is on and ``timeout_ms`` outlasts the window in which a worker starts the jobs
it claimed (``leases.start_window`` of ``settings.lock_duration``): a round's ``WAIT``
delays its claim's reply, and leases running out before their jobs start would have
them stall and be recovered (dead-lettered after ``max_stalled_count`` stalls) while the
replicas lag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError, ReplicaAckError
from ...jobspec import OptionSpec
from ...leases import start_window
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

#: The ``duplicate`` slot's fragment: the idempotency record a duplicate add found is
#: written again as it is (same job id, same expiry), so that this call writes to the
#: replication stream and the ``WAIT`` after it covers the job the record points to
#: (Redis 7.2+ and Valkey wait for a connection's last write only). Runs first, before
#: any other feature's fragment looked at the record.
_DUPLICATE_LUA = """function(existing, name, data, opts, delay, ik)
  if ik ~= '' and existing then
    redis.call('SET', PREFIX .. 'idem:' .. ik, existing, 'KEEPTTL')
  end
  return nil
end"""
#: Its order in the slot: before every other feature's (``slots.ORDER_READY`` is -20).
_DUPLICATE_ORDER = -100


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
        if queue.connection.is_cluster:
            raise ConfigurationError(
                f"queue {queue.name!r}: replica-acknowledged writes are not available on "
                "Redis Cluster: WAIT must run on the shard that took the write, and a "
                "Cluster client sends it to every primary and adds up their answers (the "
                "replicas of other shards would confirm a write they never got). On a "
                "cluster set min-replicas-to-write (and min-replicas-max-lag) on the "
                "servers instead"
            )
        if not isinstance(outcomes, bool):
            raise ConfigurationError(f"outcomes must be True or False, got {outcomes!r}")
        self.queue = queue
        self.replicas = _replicas(replicas, "ReplicaAcks")
        self.timeout_ms = _timeout(timeout_ms, "ReplicaAcks")
        self.outcomes = outcomes
        _check_lease(queue, self.replicas, self.timeout_ms, outcomes)
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
        queue.scripts.add_slot("duplicate", FEATURE, _DUPLICATE_LUA, order=_DUPLICATE_ORDER)
        queue.set_write_barrier(self)

    def close(self) -> None:
        """Stop waiting for replicas on this queue (the options stay declared: jobs
        that give them are accepted and wait for nothing more than they ask)."""
        if self.queue.write_barrier is self:
            self.queue.set_write_barrier(None)
            self.queue.scripts.remove_slot("duplicate", FEATURE)

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
            out.append(None if got >= n else self._error(0, got, n, command, reply))
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
        return self._error(count, got, self.replicas, command, reply)

    def _error(
        self, outcomes: int, got: int, wanted: int, command: Sequence[Any], reply: Any
    ) -> ReplicaAckError:
        timeout = int(command[2])
        why = (
            f"WAIT failed: {reply}"
            if isinstance(reply, BaseException)
            else f"{got} of {wanted} replica(s) acknowledged within {timeout} ms"
        )
        err = NotReplicatedError(replicas=got, required=wanted, timeout_ms=timeout)
        err.queue_name, err.why, err.outcomes = self.queue.name, why, outcomes
        err.args = (str(err),)  # its text as made now; str() follows what the call adds
        return err


class NotReplicatedError(ReplicaAckError):
    """The ``ReplicaAckError`` raised by ``ReplicaAcks``: its text says what the call it
    ends wrote, and what it did not: one job (by its id), a round's outcomes, or an
    ``add_jobs`` call (how many jobs were written and not confirmed, which ones, how many
    were confirmed, from which one on nothing was sent). The producer fills in
    ``written_ids``, ``unconfirmed`` and ``not_sent_from`` after the reply was judged, so
    the text is made when it is read."""

    queue_name = ""
    why = ""
    #: Outcomes of a worker round (0: an enqueue).
    outcomes = 0

    def __str__(self) -> str:
        if not self.queue_name:
            return super().__str__()
        head = f"queue {self.queue_name!r}: "
        if self.outcomes:
            return (
                f"{head}{self.outcomes} outcome(s) were recorded on the Redis primary, but "
                f"{self.why}. They stay recorded; what is not guaranteed is that they "
                "survive a failover to a replica (a job whose outcome is lost there runs "
                f"again once its lease expires). {_CHECK}"
            )
        if self.unconfirmed:
            return head + self._call_text()
        job = f"job {self.written_ids[0]!r}" if len(self.written_ids) == 1 else "the job"
        return (
            f"{head}{job} was written on the Redis primary, but {self.why}. It is in the "
            "queue; what is not guaranteed is that it survives a failover to a replica. "
            f"{_CHECK} or raise wait_timeout_ms; adding it again with the same job_id or "
            "idempotency_key adds nothing twice and waits for the replicas again"
        )

    def _call_text(self) -> str:
        n = len(self.unconfirmed)
        written = sum(1 for i in self.written_ids if i)
        text = (
            f"{n} job(s) of this call ({_indexes(sorted(self.unconfirmed))}) were written "
            f"on the Redis primary, but {self.why}; {max(0, written - n)} other job(s) were "
            "written and confirmed"
        )
        if self.not_sent_from is not None:
            text += (
                f"; the jobs from index {self.not_sent_from} on were not sent, nothing of "
                "them was written (the call stops at the first chunk not confirmed)"
            )
        return text + (
            ". The unconfirmed jobs are in the queue; what is not guaranteed is that they "
            f"survive a failover to a replica. {_CHECK} or raise wait_timeout_ms. "
            ".written_ids, .unconfirmed and .not_sent_from say which job is which; jobs "
            "sent again with the same job_id or idempotency_key add nothing twice (jobs "
            "without either would be added again)"
        )


_CHECK = "Check the replicas (kitium-queue replicas APP --redis ...)"


def _indexes(idx: list[int]) -> str:
    """``idx`` (sorted) as text: "index 4", "indexes 0..999", or the first few."""
    if len(idx) == 1:
        return f"index {idx[0]}"
    if idx[-1] - idx[0] == len(idx) - 1:
        return f"indexes {idx[0]}..{idx[-1]}"
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return "indexes " + ", ".join(map(str, idx[:5])) + more


def _check_lease(queue: JobQueue, replicas: int, timeout_ms: int, outcomes: bool) -> None:
    """Refuse a ``timeout_ms`` that outlasts the window in which a worker starts the jobs
    it claimed: a round's ``WAIT`` (``outcomes``) comes before its claim's reply."""
    if not (outcomes and replicas):
        return
    lock_ms = queue.lock_duration_ms
    window_ms = int(start_window(lock_ms) * 1000)
    if timeout_ms >= window_ms:
        raise ConfigurationError(
            f"queue {queue.name!r}: ReplicaAcks timeout_ms={timeout_ms} with outcomes=True: "
            "a worker round waits up to that long for the replicas before the jobs it "
            f"claimed in the same round start, and with settings.lock_duration={lock_ms} ms "
            f"they must start within {window_ms} ms: while the replicas lag, their leases "
            "would run out first (the jobs stall, are recovered, and are dead-lettered "
            f"after max_stalled_count stalls). Use timeout_ms below {window_ms}, raise "
            "settings.lock_duration, or outcomes=False"
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
    the primary's offset (for the CLI's ``replicas`` command and health pages); on a
    replica, also ``primary``: the address of the server it replicates."""
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
    out = {
        "role": str(info.get("role", "?")),
        "connected_replicas": len(replicas),
        "replicas": replicas,
        "min_replicas_to_write": info.get("min_slaves_good_slaves"),
    }
    if out["role"] == "slave" and info.get("master_host"):  # a replica: of which primary
        out["primary"] = f"{info['master_host']}:{info.get('master_port', '?')}"
    return out
