"""Administrative commands, and the one choke point they all pass: ``Admin.execute``.

Every command that changes a queue on an operator's behalf (``pause``, ``resume``,
``drain``, ``clear``, ``retry_job``, ``bulk_retry``, ``replay_dlq``, ``remove_job``,
``cancel_job``, ``promote_delayed``, ``promote_job``, ``recover_stalled``, and the schedule
commands
``put_schedule``, ``update_schedule``, ``remove_schedule``, ``pause_schedule``,
``resume_schedule``) runs as ``Admin.execute(command, args, action)``:

1. the guards run, in the order added (``queue.admin.add_guard(fn)``): a guard is
   ``fn(call: AdminCall)``, sync or async, that refuses the command by raising
   (``PermissionDeniedError`` by convention); then nothing of the command runs;
2. the command runs (its arguments are checked there, so a refused or invalid call is
   seen by subscribers just like a failed one);
3. the ``admin`` lifecycle hook gets an ``AdminCall`` with the result or the error.
   ``args`` are the arguments as the caller gave them (ids, limits, flags; never job
   payloads: a schedule's data is left out, and so are the values of schedule changes).

Each ``AdminCall`` names who ran it (``principal``: the innermost
``identity.acting_as`` block, else the queue's default principal). Access control wraps
this point with a guard, audit with a subscriber. Commands that
workers run themselves as part of processing (promote and recover inside ``claim``)
are not administrative and do not pass here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .enums import JobStatus
from .errors import ConfigurationError, JobActiveError, JobNotFoundError, JobStateError
from .guards import GuardList
from .hooks import AdminCall
from .identity import current_principal
from .limits import clip
from .options import shown, shown_bare
from .queries import parse_status, query_id
from .queueconfig import id_fixed

if TYPE_CHECKING:
    from .context import QueueContext
    from .features.schedules import Schedule, ScheduleStore

__all__ = ["ADMIN_BATCH", "Admin", "AdminAPI", "AdminGuard"]

T = TypeVar("T")

#: A guard of the choke point: refuses a command by raising.
AdminGuard = Callable[[AdminCall], Awaitable[None] | None]

#: Most jobs one admin script call moves (promote, recover, retry, replay, drain): the
#: scripts clamp to the same bound, so no single call blocks Redis for long.
ADMIN_BATCH = 1000
#: The states ``bulk_retry`` takes jobs from.
_RETRYABLE = (JobStatus.FAILED, JobStatus.DLQ, JobStatus.COMPLETED)


def _check_limit(limit: Any, what: str) -> int:
    """``limit`` as an int >= 0, or ConfigurationError (bool, float, NaN, negative)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ConfigurationError(f"{what} must be an int >= 0, got {clip(repr(limit), 100)}")
    return limit


def _check_flag(value: Any, what: str) -> bool:
    """``value`` as a bool, or ConfigurationError: a flag that decides what is deleted
    (``clear(force=)``, ``drain(delayed=)``) is never read by truthiness, so the text
    ``"false"`` cannot force anything."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{what} must be True or False, got {shown(value)}")
    return value


def _id_shown(exc: JobNotFoundError | JobStateError, job_id: str) -> None:
    """Show job id ``job_id`` escaped and clipped (``shown_bare``) in ``exc``, raised by a
    script whose message starts ``job <id>`` with the id as given (Redis turns line
    breaks into spaces, one for one), in place."""
    sent = job_id.replace("\x00", "\\0")  # as errors.lua's fail() writes a NUL
    text, head = str(exc), f"job {sent}"
    rest = text[len(head) :]
    if text[:4] == "job " and len(text) >= len(head) and rest[:1] in ("", " "):
        exc.args = (f"job {shown_bare(job_id)}{clip(rest, 300)}",)


class Admin:
    """The administrative commands of one queue and their choke point (``queue.admin``).

    ``JobQueue``'s admin methods delegate here and document each command.
    """

    def __init__(self, ctx: QueueContext) -> None:
        self.ctx = ctx
        self._guards: GuardList[AdminCall] = GuardList("admin guard")
        self._clear_steps: list[Callable[[], Awaitable[Any]]] = []

    # ------------------------------------------------------------------ choke point
    def add_guard(self, guard: AdminGuard) -> None:
        """Run ``guard(call)`` before every administrative command (after the guards
        added before it); it refuses the command by raising, e.g.
        ``PermissionDeniedError``. Adding the same guard twice is a no-op."""
        self._guards.add(guard)

    def add_clear_step(self, step: Callable[[], Awaitable[Any]]) -> None:
        """Run ``await step()`` at the end of every ``clear()``, after the jobs are gone:
        a feature deletes the keys it keeps outside the job records there (group
        state, breaker windows). Adding the same step twice is a no-op."""
        if not callable(step):
            raise ConfigurationError(f"clear step must be callable, got {type(step).__name__}")
        if not any(s is step for s in self._clear_steps):
            self._clear_steps.append(step)

    def remove_guard(self, guard: AdminGuard) -> None:
        """Remove a guard added with ``add_guard`` (no-op if absent)."""
        self._guards.remove(guard)

    @property
    def guards(self) -> tuple[AdminGuard, ...]:
        """The guards, in the order they run."""
        return self._guards.items

    async def execute(
        self,
        command: str,
        args: Mapping[str, Any],
        action: Callable[[], Awaitable[T]],
        *,
        shown: Callable[[T], Any] | None = None,
    ) -> T:
        """Run one administrative command through the guards and report it.

        Args:
            command: the command's name (``AdminCall.command``).
            args: its arguments as given (no payloads).
            action: runs the command; called only once every guard let it pass.
            shown: what subscribers see of the result (default: the result itself).

        Returns what ``action`` returned; raises what a guard or ``action`` raised.
        """
        ctx = self.ctx
        who = current_principal(ctx.principal)
        call = AdminCall(ctx.name, command, dict(args), principal=who)
        try:
            if self._guards:
                await self._guards.run(call)
            result = await action()
        except BaseException as exc:
            if ctx.hooks.admin:
                ctx.hooks.emit_admin(
                    AdminCall(ctx.name, command, call.args, error=exc, principal=who)
                )
            raise
        if ctx.hooks.admin:
            seen = shown(result) if shown is not None else result
            ctx.hooks.emit_admin(
                AdminCall(ctx.name, command, call.args, result=seen, principal=who)
            )
        return result

    # ------------------------------------------------------------------ commands
    async def pause(self) -> None:
        """``JobQueue.pause``."""
        await self.execute("pause", {}, lambda: self._run_none("pause", ["1"]))

    async def resume(self) -> None:
        """``JobQueue.resume``."""
        await self.execute("resume", {}, lambda: self._run_none("pause", ["0"]))

    async def _run_none(self, script: str, args: list[Any]) -> None:
        await self.ctx.run(script, args)

    async def drain(self, *, delayed: bool = True) -> int:
        """``JobQueue.drain``."""

        async def action() -> int:
            total = 0
            flag = "1" if _check_flag(delayed, "drain delayed") else "0"
            while True:
                n = int(await self.ctx.run("drain", [flag, ADMIN_BATCH]))
                total += n
                if n == 0:
                    return total

        return await self.execute("drain", {"delayed": delayed}, action)

    async def clear(self, *, force: bool = False) -> None:
        """``JobQueue.clear``."""

        async def action() -> None:
            flag = "1" if _check_flag(force, "clear force") else "0"
            while int(await self.ctx.run("clear", [flag, 1000])):
                pass
            for step in self._clear_steps:
                await step()

        await self.execute("clear", {"force": force}, action)

    async def retry_job(self, job_id: str) -> None:
        """``JobQueue.retry_job``."""

        async def action() -> None:
            jid = query_id(job_id)
            try:
                await self.ctx.run("retry", ["ids", jid])
            except (JobNotFoundError, JobStateError) as exc:
                _id_shown(exc, jid)
                raise

        await self.execute("retry_job", {"job_id": job_id}, action)

    async def _moved(self, script: str, head: list[Any], limit: int) -> int:
        # Up to ``limit`` jobs, in script calls of at most ADMIN_BATCH; each call examines
        # that many entries from the position after those skipped so far (their record is
        # gone or damaged: they stay) and replies the ids it moved, how many it skipped
        # and the newest score it examines: the first call's cutoff bounds every later
        # call, so a job moved here that fails or completes again meanwhile (its new
        # finish time is past the cutoff) is not moved a second time. Fewer examined
        # than asked means nothing is left.
        moved = skip = 0
        upto: list[Any] = []
        while moved < limit:
            batch = min(ADMIN_BATCH, limit - moved)
            ids, skipped, cut = await self.ctx.run(script, [*head, batch, skip, *upto])
            upto = [cut]
            moved += len(ids)
            skip += int(skipped)
            if len(ids) + int(skipped) < batch:
                break
        return moved

    async def bulk_retry(
        self, status: JobStatus | str = JobStatus.FAILED, limit: int = 1000
    ) -> int:
        """``JobQueue.bulk_retry``."""

        async def action() -> int:
            st = parse_status(status)
            if st not in _RETRYABLE:
                raise ConfigurationError(
                    f"bulk_retry status must be one of {[s.value for s in _RETRYABLE]} "
                    f"(jobs that finished), got {shown(status)}"
                )
            return await self._moved(
                "retry", ["state", st.value], _check_limit(limit, "bulk_retry limit")
            )

        return await self.execute("bulk_retry", {"status": status, "limit": limit}, action)

    async def replay_dlq(self, limit: int = 1000) -> int:
        """``JobQueue.replay_dlq``."""

        async def action() -> int:
            return await self._moved("replay", [], _check_limit(limit, "replay_dlq limit"))

        return await self.execute("replay_dlq", {"limit": limit}, action)

    async def remove_job(self, job_id: str) -> bool:
        """``JobQueue.remove_job``; a removed job is reported to the ``removed`` hook."""
        ctx = self.ctx

        async def action() -> bool:
            jid = query_id(job_id)
            (status,) = await ctx.run("remove", [jid])
            if status == b"active":
                raise JobActiveError(
                    f"job {shown_bare(jid)} is running; cancel it with cancel_job() or wait for it"
                )
            removed = status == b"removed"
            if removed and ctx.hooks.removed:
                ctx.hooks.emit_removed(ctx.name, jid)
            return bool(removed)

        return await self.execute("remove_job", {"job_id": job_id}, action)

    async def cancel_job(self, job_id: str) -> str:
        """``JobQueue.cancel_job``."""
        ctx = self.ctx

        async def action() -> str:
            (status,) = await ctx.run("cancel", [query_id(job_id)])
            if status == b"missing":
                raise JobNotFoundError(
                    f"job {shown_bare(job_id)} does not exist in queue {ctx.name!r}"
                )
            return {"removed": "removed", "flagged": "cancelling"}.get(status.decode(), "finished")

        return await self.execute("cancel_job", {"job_id": job_id}, action)

    async def promote_delayed(self, limit: int = 1000) -> int:
        """``JobQueue.promote_delayed``."""
        ctx = self.ctx

        async def action() -> int:
            todo = _check_limit(limit, "promote_delayed limit")
            dlq = "1" if ctx.dlq.enabled else "0"
            moved = 0
            while moved < todo:
                batch = min(ADMIN_BATCH, todo - moved)
                n = int(await ctx.run("promote", [batch, dlq]))
                moved += n
                if n < batch:  # no due job left
                    break
            return moved

        return await self.execute("promote_delayed", {"limit": limit}, action)

    async def promote_job(self, job_id: str) -> None:
        """``JobQueue.promote_job``."""
        ctx = self.ctx

        async def action() -> None:
            dlq = "1" if ctx.dlq.enabled else "0"
            jid = query_id(job_id)
            try:
                await ctx.run("promote", [1, dlq, jid])
            except (JobNotFoundError, JobStateError) as exc:
                _id_shown(exc, jid)
                raise

        await self.execute("promote_job", {"job_id": job_id}, action)

    async def recover_stalled(self, limit: int = 1000) -> tuple[list[str], list[str]]:
        """``JobQueue.recover_stalled``."""
        ctx = self.ctx

        async def action() -> tuple[list[str], list[str]]:
            todo = _check_limit(limit, "recover_stalled limit")
            dlq = "1" if ctx.dlq.enabled else "0"
            back: list[str] = []
            dead: list[str] = []
            while len(back) + len(dead) < todo:
                batch = min(ADMIN_BATCH, todo - len(back) - len(dead))
                b, d = await ctx.run("recover", [ctx.settings.max_stalled_count, dlq, batch])
                back += [x.decode() for x in b]
                dead += [x.decode() for x in d]
                if len(b) + len(d) < batch:  # no expired lease left
                    break
            return back, dead

        return await self.execute("recover_stalled", {"limit": limit}, action)


def _split_schedule_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from .features.schedules import SCHEDULE_OPTIONS

    sched = {k: v for k, v in options.items() if k in SCHEDULE_OPTIONS}
    return sched, {k: v for k, v in options.items() if k not in SCHEDULE_OPTIONS}


class AdminAPI:
    """The administrative methods of ``JobQueue`` (delegating to ``queue.admin``; the
    schedule commands to ``queue.schedules``, which passes the same choke point)."""

    admin: Admin

    if TYPE_CHECKING:

        @property
        def schedules(self) -> ScheduleStore: ...

    async def pause(self) -> None:
        """Pause for every worker: running jobs finish, nothing new starts."""
        await self.admin.pause()

    async def resume(self) -> None:
        """Resume a paused queue."""
        await self.admin.resume()

    async def drain(self, *, delayed: bool = True) -> int:
        """Remove every job that has not started (waiting and, by default, delayed).

        Running jobs are left to finish. Returns the number removed. Works in script calls
        of at most 1000 jobs, so Redis serves other clients in between. ``delayed`` is
        True or False (anything else: ``ConfigurationError``).
        """
        return await self.admin.drain(delayed=delayed)

    async def clear(self, *, force: bool = False) -> None:
        """Delete every job of the queue and the state that goes with jobs (state sets,
        parked jobs, events, group turns and lines through the features' clear steps).

        Kept on purpose: the id and fencing-token counters (ids and tokens never
        repeat); idempotency windows with what they keep (stored results, execution
        records: a repeated key still runs nothing until its window ends); and what the
        features hold that is configuration or history rather than jobs: circuit
        breakers and their log, webhook endpoints, deliveries and the outbox they are
        read from, encryption key ids and rotation records; the queue's own settings
        (a pause stays a pause, the outbox's cap). Remove those through their managers
        (``remove_breaker``, ``remove_webhook``).
        Refused with ``QueueActiveError`` while jobs run, unless ``force=True``; ``force``
        is True or False, never read by truthiness (``"false"``: ``ConfigurationError``).
        """
        await self.admin.clear(force=force)

    async def retry_job(self, job_id: str) -> None:
        """Run a failed, dead-lettered or completed job again with fresh attempts.

        Raises ``JobNotFoundError`` or ``JobStateError`` (waiting/active/delayed jobs, or
        a record damaged so it cannot run again: its key holds another type).
        """
        await self.admin.retry_job(job_id)

    async def bulk_retry(
        self, status: JobStatus | str = JobStatus.FAILED, limit: int = 1000
    ) -> int:
        """Retry up to ``limit`` jobs of a state (failed, dlq or completed), oldest first.

        ``status`` is failed, dlq or completed and ``limit`` an int >= 0 (else
        ``ConfigurationError``); the jobs move in script calls of at most 1000, each
        atomic. Only the jobs in that state when the call starts are taken, each once: one
        it moved that finishes again meanwhile is not moved again. A job whose record is
        gone or damaged (its key holds another type) cannot run again, and one held
        elsewhere (running, delayed, parked) is not run twice: each is skipped and stays.
        Returns how many moved.
        """
        return await self.admin.bulk_retry(status, limit)

    async def replay_dlq(self, limit: int = 1000) -> int:
        """Move up to ``limit`` dead-lettered jobs back to waiting; returns how many.

        ``limit`` is an int >= 0 (else ``ConfigurationError``); the jobs move in script
        calls of at most 1000, each atomic. Only the jobs dead-lettered when the call
        starts are taken, each once: one it replayed that is dead-lettered again meanwhile
        is not replayed again. A job whose record is gone or damaged (its key
        holds another type) cannot run again: it is skipped and stays in the DLQ, as the
        record of the loss (``remove_job`` removes it); so does a stale entry of a job
        held elsewhere (running, delayed, parked), which is never run twice.
        """
        return await self.admin.replay_dlq(limit)

    async def remove_job(self, job_id: str) -> bool:
        """Delete a job that is not running. Returns False if it did not exist.

        Raises ``JobActiveError`` for a running job (use ``cancel_job``). A job whose
        record is gone or damaged (its key holds another type) but is still listed in a
        state set is removed from it, its key with it (True); a running one is left to
        recovery, which dead-letters it.
        """
        return await self.admin.remove_job(job_id)

    async def cancel_job(self, job_id: str) -> str:
        """Stop a job: a waiting or delayed job is removed; a running one is stopped by its
        worker at the next lease renewal and recorded as failed (no retry).

        Returns ``"removed"``, ``"cancelling"`` or ``"finished"`` (nothing to cancel).
        """
        return await self.admin.cancel_job(job_id)

    async def promote_delayed(self, limit: int = 1000) -> int:
        """Move up to ``limit`` due delayed jobs to waiting now; returns how many moved.

        Workers also do this themselves. ``limit`` is an int >= 0 (else
        ``ConfigurationError``). The jobs move in script calls of at most 1000 (the
        script clamps to that too), so a large limit never blocks Redis for long: each
        call is atomic, the whole is not, and jobs that fall due meanwhile may be
        promoted by it as well.
        """
        return await self.admin.promote_delayed(limit)

    async def promote_job(self, job_id: str) -> None:
        """Move one delayed job to waiting now, whether it is due or not (its place in
        line is its priority's, as if its delay had ended).

        Raises ``JobNotFoundError``, or ``JobStateError`` when the job is not delayed.
        """
        await self.admin.promote_job(job_id)

    async def recover_stalled(self, limit: int = 1000) -> tuple[list[str], list[str]]:
        """Requeue jobs whose lease expired; returns (requeued ids, dead-lettered ids).

        Examines up to ``limit`` expired leases (an int >= 0, else
        ``ConfigurationError``) in script calls of at most 1000 each.
        """
        return await self.admin.recover_stalled(limit)

    # Scheduling lives in schedules.py / scheduler.py, imported on first use;
    # docs/scheduling.md describes every option.
    async def schedule_job(
        self, job_name: str, data: Any, cron_pattern: str, **options: Any
    ) -> Schedule:
        """Enqueue ``job_name`` on a cron schedule; upserts by schedule id.

        ``cron_pattern``: 5 fields (minute hour day month weekday) or 6 with seconds
        first; ``@hourly``-style aliases. Schedule options: ``schedule_id`` (default
        ``"<job_name>@<pattern>"``), ``tz`` ("UTC"), ``start_date``, ``end_date``,
        ``limit`` (runs), ``jitter`` (0 ms), ``misfire`` ("run_once" | "skip" |
        "catch_up" | ("catch_up", N)), ``misfire_grace`` (1000 ms), ``overlap``
        ("allow" | "skip"); any other keyword is a job option (attempts, priority, ...).
        Any worker's scheduler fires it, each tick once. Raises ``ConfigurationError``
        for a malformed pattern or option.

        Example::

            await queue.schedule_job("report", {}, "0 2 * * *", tz="Europe/Berlin")
        """
        sched, job_opts = _split_schedule_options(options)
        return await self.schedules.declare(
            job_name, data, cron=cron_pattern, options=job_opts, **sched
        )

    async def schedule_every(
        self, job_name: str, data: Any, interval_ms: Any, **options: Any
    ) -> Schedule:
        """Enqueue ``job_name`` every ``interval_ms`` (ms or timedelta), ticks aligned
        on ``start_date`` (default: the Unix epoch). Same options as ``schedule_job``;
        ``jitter`` delays each run by up to that many ms, never past the next tick.

        Example::

            await queue.schedule_every("heartbeat", {"svc": "api"}, 30_000, jitter=2000)
        """
        sched, job_opts = _split_schedule_options(options)
        return await self.schedules.declare(
            job_name, data, every=interval_ms, options=job_opts, **sched
        )

    @id_fixed
    async def update_schedule(self, schedule_id: str, **changes: Any) -> Schedule:
        """Change some fields of a schedule (``data``, ``cron_pattern``, ``interval_ms``,
        schedule or job options); raises ``ScheduleNotFoundError``. Concurrent updates of
        different fields all take effect. The id cannot change (``ConfigurationError``):
        remove the schedule and declare it again under the new id."""
        return await self.schedules.update(schedule_id, **changes)

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule (jobs it enqueued stay); False if it did not exist."""
        return await self.schedules.remove(schedule_id)

    async def pause_schedule(self, schedule_id: str) -> bool:
        """Stop a schedule from firing; False if it does not exist."""
        return await self.schedules.pause(schedule_id)

    async def resume_schedule(self, schedule_id: str) -> bool:
        """Resume a paused schedule at its next tick from now; False if it does not exist."""
        return await self.schedules.resume(schedule_id)
