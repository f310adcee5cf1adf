"""What the dashboard's buttons do. Every action is a command of the queue's admin choke
point (directly, or through a feature's manager, which passes it too), run inside
``identity.acting_as(<the session's principal>)``: guards see who asks and audit
subscribers record who did what.

An action is refused before anything runs when the session's role does not allow it
(``auth.ACTIONS``). Actions that touch many jobs (bulk retry or remove, replaying dead
letters, draining, rebuilding parked sets: with a dry run's report, erasing a data
subject's jobs: with their count) first answer with what they would do and run only
when the form comes back with ``confirm=yes``; the confirmation of one that acts on
jobs says how many and lists the first ids. Bulk inputs are bounded: ``MAX_BULK`` ids
per request, ``MAX_REPLAY`` jobs per replay or retry of a whole state. An action that
did nothing (no such job or schedule, a job not in the state the button is for) is an
error (400), not a success. A subject id (personal data) is never put in a message: the
subject is named by its SHA-256 digest, as its audit record does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..enums import JobStatus
from ..errors import ConfigurationError, JobActiveError, JobStateError, KitiumQueueError
from ..identity import acting_as
from ..limits import clip
from .auth import ACTIONS, Session
from .data import Filter, enabled, search

__all__ = ["MAX_BULK", "MAX_REPLAY", "Outcome", "run_action"]

#: Most job ids one bulk request names.
MAX_BULK = 500
#: Most jobs one replay of dead letters (or deliveries), or retry of a whole state, moves.
MAX_REPLAY = 1000
#: States whose jobs "Retry all" moves back to waiting (completed ones only by selection:
#: retrying every completed job runs work again that was done).
RETRY_ALL = ("failed", "dlq")
#: Ids a confirmation lists.
PREVIEW = 20
#: Actions that ask for a confirmation first.
CONFIRM = frozenset(
    {
        "bulk-retry",
        "bulk-remove",
        "replay-dlq",
        "drain",
        "replay-webhooks",
        "rebuild-parked",
        "find-orphans",
        "erase-subject",
    }
)

Form = Mapping[str, list[str]]


class NotDone(Exception):
    """An action that found nothing to act on: its message is shown as an error."""


#: What the dashboard says for a running job it cannot remove (the core's text names
#: ``cancel_job()``, which is the Cancel button here).
_RUNNING = "is running: cancel it with the Cancel button on its page, or wait for it"


@dataclass(slots=True)
class Outcome:
    """What an action did, for the page that follows.

    ``status``: the HTTP status (403 refused by role or guard; ``refused_role``: by
    the session's role). ``confirm``: the action awaits a confirmation; ``summary``
    says what it would do and ``preview`` lists some of the jobs it would touch.
    """

    ok: bool
    message: str
    status: int = 200
    confirm: bool = False
    summary: str = ""
    preview: list[str] = field(default_factory=list)
    refused_role: bool = False


def one(form: Form, key: str, *, required: bool = True, limit: int = 1000) -> str:
    """The single value of ``key`` in ``form`` (cut to ``limit`` characters)."""
    vals = form.get(key) or []
    v = vals[0].strip() if vals else ""
    if required and not v:
        raise ConfigurationError(f"the form lacks {key!r}")
    return v[:limit]


def _ids(form: Form) -> list[str]:
    ids = [i.strip() for i in form.get("ids", []) if i.strip()]
    if not ids:
        raise ConfigurationError("select at least one job")
    if len(ids) > MAX_BULK:
        raise ConfigurationError(f"at most {MAX_BULK} jobs per bulk action, got {len(ids)}")
    return list(dict.fromkeys(i[:1000] for i in ids))


def _limit(form: Form, default: int, most: int) -> int:
    raw = one(form, "limit", required=False, limit=12) or str(default)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise ConfigurationError(f"limit must be a whole number from 1 to {most}")
    return int(raw)


def _feature(queue: Any, page: str) -> None:
    if not enabled(queue, page):
        raise ConfigurationError(f"{page} are not enabled on queue {queue.name!r}")


# ---------------------------------------------------------------------- the actions
async def _retry(q: Any, form: Form, s: Session) -> str:
    jid = one(form, "job_id")
    await q.retry_job(jid)
    return f"job {jid} is waiting again"


async def _remove(q: Any, form: Form, s: Session) -> str:
    jid = one(form, "job_id")
    try:
        removed = await q.remove_job(jid)
    except JobActiveError:
        raise NotDone(f"job {jid} {_RUNNING}") from None
    if not removed:
        raise NotDone(f"job {jid} did not exist")
    return f"job {jid} removed"


async def _promote(q: Any, form: Form, s: Session) -> str:
    jid = one(form, "job_id")
    try:
        await q.promote_job(jid)
    except JobStateError:
        raise NotDone(f"job {jid} is not delayed") from None
    return f"job {jid} promoted to waiting"


async def _cancel(q: Any, form: Form, s: Session) -> str:
    jid = one(form, "job_id")
    said = await q.cancel_job(jid)
    if said == "finished":  # nothing to stop: an error, not a success
        raise NotDone(f"job {jid} had already finished: nothing was cancelled")
    return f"job {jid}: {said}"


async def _each(q: Any, ids: list[str], method: str) -> str:
    done, missing, failed = 0, [], []
    for jid in ids:
        try:
            if await getattr(q, method)(jid) is False:  # remove_job: there was no such job
                missing.append(clip(jid, 60))
            else:
                done += 1
        except JobActiveError:
            failed.append(f"{clip(jid, 60)} {_RUNNING}")
        except KitiumQueueError as exc:
            failed.append(f"{jid}: {clip(str(exc), 120)}")
    more = f"; {len(missing)} did not exist ({', '.join(missing[:5])})" if missing else ""
    more += f"; {len(failed)} refused ({'; '.join(failed[:5])})" if failed else ""
    text = f"{done} of {len(ids)} job(s) done{more}"
    if not done and ids:
        raise NotDone(text)
    return text


def _retry_all(form: Form) -> tuple[str, int]:
    """The state and limit of a "Retry all" (no ids selected)."""
    state = one(form, "state")
    if state not in RETRY_ALL:
        raise ConfigurationError(
            f"retry all is for {' and '.join(RETRY_ALL)} jobs, not {clip(state, 30)!r}: "
            "select the jobs to retry instead"
        )
    return state, _limit(form, MAX_REPLAY, MAX_REPLAY)


async def _bulk_retry(q: Any, form: Form, s: Session) -> str:
    if form.get("ids"):
        return await _each(q, _ids(form), "retry_job")
    state, limit = _retry_all(form)
    n = await q.bulk_retry(state, limit)
    return f"{n} {state} job(s) are waiting again"


async def _bulk_remove(q: Any, form: Form, s: Session) -> str:
    return await _each(q, _ids(form), "remove_job")


async def _replay_dlq(q: Any, form: Form, s: Session) -> str:
    flt = _filter(form)
    limit = _limit(form, MAX_REPLAY, MAX_REPLAY)
    if flt.empty:
        n = await q.replay_dlq(limit)
        return f"{n} dead-lettered job(s) replayed"
    found = await search(q, JobStatus.DLQ, flt, limit=limit)
    msg = await _each(q, [j.id for j in found.jobs], "retry_job")
    return f"replayed by filter: {msg}"


async def _pause(q: Any, form: Form, s: Session) -> str:
    await q.pause()
    return f"queue {q.name} paused"


async def _resume(q: Any, form: Form, s: Session) -> str:
    await q.resume()
    return f"queue {q.name} resumed"


async def _drain(q: Any, form: Form, s: Session) -> str:
    return f"{await q.drain()} job(s) removed from queue {q.name}"


async def _group(q: Any, form: Form, pause: bool) -> str:
    _feature(q, "groups")
    from ..features.groups import FIFOQueueManager

    gid = one(form, "group_id", limit=256)
    mgr = FIFOQueueManager.for_queue(q)
    if pause:
        await mgr.pause_group(gid)
        return f"group {gid} paused"
    await mgr.resume_group(gid)
    return f"group {gid} resumed"


async def _pause_group(q: Any, form: Form, s: Session) -> str:
    return await _group(q, form, True)


async def _resume_group(q: Any, form: Form, s: Session) -> str:
    return await _group(q, form, False)


async def _schedule(q: Any, form: Form, method: str, done: str) -> str:
    sid = one(form, "schedule_id")
    if not await getattr(q, method)(sid):
        raise NotDone(f"schedule {sid} does not exist")
    return f"schedule {sid} {done}"


async def _pause_schedule(q: Any, form: Form, s: Session) -> str:
    return await _schedule(q, form, "pause_schedule", "paused")


async def _resume_schedule(q: Any, form: Form, s: Session) -> str:
    return await _schedule(q, form, "resume_schedule", "resumed")


async def _remove_schedule(q: Any, form: Form, s: Session) -> str:
    return await _schedule(q, form, "remove_schedule", "removed")


def _breakers(q: Any) -> Any:
    _feature(q, "breakers")
    from ..features.breakers import CircuitBreakerManager

    return CircuitBreakerManager.for_queue(q)


async def _reset_breaker(q: Any, form: Form, s: Session) -> str:
    bid = one(form, "breaker_id", limit=256)
    await _breakers(q).reset(bid, reason=f"reset from the dashboard by {s.principal}")
    return f"breaker {bid} closed"


async def _open_breaker(q: Any, form: Form, s: Session) -> str:
    bid = one(form, "breaker_id", limit=256)
    await _breakers(q).force_open(bid, reason=f"opened from the dashboard by {s.principal}")
    return f"breaker {bid} opened"


def _webhooks(q: Any) -> Any:
    _feature(q, "webhooks")
    from ..features.webhooks import WebhookManager

    mgr = WebhookManager.of(q)
    if mgr is None:
        raise ConfigurationError(f"no WebhookManager was made for queue {q.name!r} here")
    return mgr


async def _retry_delivery(q: Any, form: Form, s: Session) -> str:
    wid, eid = one(form, "webhook_id", limit=256), one(form, "event_id", limit=256)
    if not await _webhooks(q).retry_delivery(wid, eid):
        raise NotDone(f"no delivery {eid} to {wid}")
    return f"delivery {eid} to {wid} scheduled"


async def _replay_webhooks(q: Any, form: Form, s: Session) -> str:
    wid = one(form, "webhook_id", required=False, limit=256) or None
    n = await _webhooks(q).replay_dlq(_limit(form, MAX_REPLAY, MAX_REPLAY), wid)
    return f"{n} dead-lettered deliveries scheduled"


def _blocker(form: Form) -> str | None:
    # As given (not stripped: a blocker's name may hold spaces), or None for every one.
    return (form.get("blocker") or [""])[0][:600] or None


def _repair(r: Any, would: str = "") -> str:
    """A ``parking.ParkRepair`` in one sentence."""
    after = "-" if r.total_after is None else r.total_after
    return (
        f"{r.restored} of {r.pending} parked job(s) {would}put back ({r.released} sent "
        f"on to wait), {r.sets_rebuilt} set(s) rebuilt, {r.damaged_replaced} damaged key(s) "
        f"replaced, {r.index_fixed} count(s) fixed, {r.skipped} skipped; parked total "
        f"{r.total_before} -> {after}"
    )


async def _rebuild_parked(q: Any, form: Form, s: Session) -> str:
    from ..parking import rebuild_parked

    return f"parked sets rebuilt: {_repair(await rebuild_parked(q, _blocker(form)))}"


def _orphans(r: Any, would: str = "") -> str:
    """An ``orphans.OrphanReport`` in one sentence."""
    statuses = ", ".join(f"{n} {st}" for st, n in sorted(r.by_status.items())) or "none"
    return (
        f"{r.orphans} of {r.examined} job record(s) in no state set {would}put back "
        f"({statuses}); {r.parked} parked and {r.unknown} of unknown status left alone "
        f"(parked: rebuild the parked sets), {r.damaged} damaged"
    )


async def _find_orphans(q: Any, form: Form, s: Session) -> str:
    from ..orphans import find_orphans

    return f"orphaned job records: {_orphans(await find_orphans(q, repair=True))}"


def _subject(form: Form) -> str:
    # As given (not stripped): the subject id the look-up found, never echoed.
    return (form.get("subject_id") or [""])[0][:1000]


async def _erase_subject(q: Any, form: Form, s: Session) -> str:
    from .views_governance import compliance_of

    r = await compliance_of(q).erase_subject(_subject(form))
    return (
        f"erased {r.jobs} job(s) of subject {r.subject_digest[:16]}… ({r.active} running, "
        f"{r.events} event(s) deleted)"
    )


_RUN: dict[str, Callable[[Any, Form, Session], Awaitable[str]]] = {
    "retry": _retry,
    "remove": _remove,
    "promote": _promote,
    "cancel": _cancel,
    "bulk-retry": _bulk_retry,
    "bulk-remove": _bulk_remove,
    "replay-dlq": _replay_dlq,
    "pause": _pause,
    "resume": _resume,
    "drain": _drain,
    "pause-group": _pause_group,
    "resume-group": _resume_group,
    "pause-schedule": _pause_schedule,
    "resume-schedule": _resume_schedule,
    "remove-schedule": _remove_schedule,
    "reset-breaker": _reset_breaker,
    "open-breaker": _open_breaker,
    "retry-delivery": _retry_delivery,
    "replay-webhooks": _replay_webhooks,
    "rebuild-parked": _rebuild_parked,
    "find-orphans": _find_orphans,
    "erase-subject": _erase_subject,
}
assert set(_RUN) == set(ACTIONS), "every action has a role and a handler"


def _ask(summary: str, preview: list[str] | None = None) -> Outcome:
    return Outcome(True, "", confirm=True, summary=summary, preview=preview or [])


async def _oldest(q: Any, state: str, n: int) -> list[str]:
    """The ids of the first ``PREVIEW`` of the ``n`` oldest finished jobs of ``state``:
    the ones a replay or "Retry all" moves first (finished jobs are listed newest
    first, so they are read from the end)."""
    total = (await q.get_stats())[state]
    if not n or not total:
        return []
    jobs = await q.get_jobs_by_status(
        state, min(PREVIEW, n), max(0, total - min(PREVIEW, n)), include_data=False
    )
    return [j.id for j in reversed(jobs)]


def _filter(form: Form) -> Filter:
    flt = Filter.of({k: one(form, k, required=False) for k in ("name", "error", "field", "value")})
    if flt.value and not flt.field:
        raise ConfigurationError(
            "a value to match needs the data field it is in: give field= too, or leave value= empty"
        )
    return flt


async def _preview(q: Any, action: str, form: Form) -> Outcome:
    """What a confirmed action would do."""
    if action == "rebuild-parked":  # a dry run of the repair: what it would restore now
        from ..parking import rebuild_parked

        r = await rebuild_parked(q, _blocker(form), dry_run=True)
        keys = [f"damaged key {k}" for k in r.damaged_keys[:20]]
        return _ask(
            f"Rebuild the parked sets of queue {q.name}? A dry run finds: {_repair(r, 'to be ')}.",
            [f"blocker {b}" for b in r.blockers[:20]] + keys,
        )
    if action == "find-orphans":  # the report: what a repair would put back now
        from ..orphans import find_orphans

        o = await find_orphans(q)
        return _ask(
            f"Put back the job records of queue {q.name} that no state set lists? "
            f"A walk finds: {_orphans(o, 'to be ')}.",
            [f"job {j}" for j in o.job_ids[:20]],
        )
    if action == "erase-subject":  # how many jobs the subject's index holds now
        from ..features.compliance import subject_digest
        from .views_governance import SUBJECT_SCAN, compliance_of

        subject = _subject(form)
        ids = await compliance_of(q).subject_jobs(subject, SUBJECT_SCAN + 1)
        n = f"more than {SUBJECT_SCAN}" if len(ids) > SUBJECT_SCAN else str(len(ids))
        return _ask(
            f"Erase every job of subject {subject_digest(subject)[:16]}… in queue {q.name}? "
            f"{n} job(s) are indexed under it: each is erased in any state, running ones "
            "too, with its result, logs, dead-letter entry, stored results and events. "
            "This cannot be undone.",
            sorted(ids)[:20],
        )
    if action == "replay-dlq":
        flt = _filter(form)
        limit = _limit(form, MAX_REPLAY, MAX_REPLAY)
        if flt.empty:
            n = min(limit, (await q.get_stats()).dlq)
            return _ask(f"Replay {n} dead-lettered job(s)?", await _oldest(q, "dlq", n))
        found = await search(q, JobStatus.DLQ, flt, limit=limit)
        more = "" if found.next_offset is None else " (the first ones found; more may match)"
        return _ask(
            f"Replay {len(found.jobs)} dead-lettered job(s) matching {flt.as_args()}{more}?",
            [j.id for j in found.jobs[:PREVIEW]],
        )
    if action == "replay-webhooks":  # the dead deliveries a replay schedules, oldest first
        wid = one(form, "webhook_id", required=False, limit=256) or None
        dead = await _webhooks(q).list_dlq(_limit(form, MAX_REPLAY, MAX_REPLAY), wid)
        of = f" to {wid}" if wid else ""
        return _ask(
            f"Replay {len(dead)} dead-lettered deliveries{of}, the oldest first?",
            [f"{d.event_type} {d.event_id} to {d.webhook_id}" for d in dead[:PREVIEW]],
        )
    if action in ("bulk-retry", "bulk-remove") and form.get("ids"):
        ids = _ids(form)
        verb = "Retry" if action == "bulk-retry" else "Remove"
        return _ask(f"{verb} {len(ids)} job(s)?", ids[:PREVIEW])
    if action == "bulk-retry":
        state, limit = _retry_all(form)
        n = min(limit, (await q.get_stats())[state])
        return _ask(
            f"Retry {n} {state} job(s), the oldest first (at most {limit})?",
            await _oldest(q, state, n),
        )
    if action == "drain":
        st = await q.get_stats()
        first: list[str] = []
        for state in ("waiting", "pending", "delayed"):
            if len(first) < PREVIEW and st[state]:
                jobs = await q.get_jobs_by_status(state, PREVIEW - len(first), include_data=False)
                first += [j.id for j in jobs]
        n = st.waiting + st.pending + st.delayed
        return _ask(
            f"Remove {n} job(s) of queue {q.name} that have not started ({st.waiting} "
            f"waiting, {st.pending} pending, {st.delayed} delayed)? Running jobs finish.",
            first,
        )
    wid = one(form, "webhook_id", required=False) or "every endpoint"
    return _ask(f"Replay the dead-lettered deliveries of {wid}?")


async def run_action(
    queue: Any, action: str, form: Form, session: Session, *, show_payloads: bool = True
) -> Outcome:
    """Run ``action`` on ``queue`` for ``session`` (role checked first), or, for an
    action that needs it, answer with the confirmation to ask. ``show_payloads=False``
    (a dashboard that hides job data) refuses a match on a data field, which would
    tell what the data holds."""
    if action not in _RUN:
        return Outcome(False, f"unknown action {clip(action, 50)!r}", status=404)
    if not show_payloads and (
        one(form, "field", required=False) or one(form, "value", required=False)
    ):
        return Outcome(
            False,
            "this dashboard hides job data (show_payloads=False), so it does not match "
            "jobs by a data field: leave field= and value= empty",
            status=400,
        )
    if not session.may(action):
        need = ACTIONS[action].value
        return Outcome(
            False,
            f"{session.principal} ({session.role.value}) may not {action}: it needs the "
            f"{need} role",
            status=403,
            refused_role=True,
        )
    try:
        with acting_as(session.principal):
            if action in CONFIRM and one(form, "confirm", required=False) != "yes":
                return await _preview(queue, action, form)
            return Outcome(True, await _RUN[action](queue, form, session))
    except NotDone as exc:
        return Outcome(False, str(exc), status=400)
    except PermissionError as exc:
        return Outcome(False, f"refused: {clip(str(exc), 300)}", status=403)
    except KitiumQueueError as exc:
        return Outcome(False, clip(str(exc), 500), status=400)
