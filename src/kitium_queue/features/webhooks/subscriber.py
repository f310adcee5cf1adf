"""In-process job events for webhooks (a ``hooks.Subscriber``).

Guaranteed endpoints get the transition events (added, completed, failed, retrying,
stalled, dead-lettered, removed) and the events other features raise in their scripts
(workflow ends, breaker changes) from the Lua fragments, atomically; this subscriber
serves the rest: every event of reliable and best-effort endpoints (handed to the
``LocalDispatcher``; other features' events as the ``feature_event`` hook reports
them), and ``job-started`` / ``job-progress`` of guaranteed endpoints, which it writes
to the outbox (durable from then on; see docs/webhooks.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ...hooks import FeatureEvent, Outcome, Subscriber
from ...limits import get_logger
from ...outbox import Outbox
from .models import event_body, feature_event_data, new_event_id
from .service import Delivery

if TYPE_CHECKING:
    from .manager import WebhookManager

__all__ = ["WebhookSubscriber"]

log = get_logger(__name__)

_MAX_PROGRESS_BYTES = 4096
_BY_OUTCOME = {"completed": "job-completed", "retrying": "job-retrying", "failed": "job-failed"}
_CODES = {"C": "job-completed", "R": "job-retrying", "F": "job-failed"}


class WebhookSubscriber(Subscriber):
    """See the module docstring."""

    def __init__(self, mgr: WebhookManager) -> None:
        self.mgr = mgr
        self._refreshing: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ plumbing
    def _fresh(self) -> None:
        """Reload registrations in the background when the cache is old (a process
        without the delivery service, e.g. a producer, still sees new endpoints)."""
        reg = self.mgr.registry
        if reg.stale() and (self._refreshing is None or self._refreshing.done()):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._refreshing = loop.create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self.mgr.registry.refresh()
        except Exception as exc:  # next event tries again
            log.debug("webhook registry refresh failed: %s", exc)

    def _emit(
        self,
        event: str,
        job_id: str,
        name: str,
        attempts: int,
        extra: dict[str, Any] | None = None,
        durable: bool = False,
    ) -> None:
        self._fresh()
        reg = self.mgr.registry
        local = reg.wanting(event, guaranteed=False)
        guaranteed = reg.wanting(event, guaranteed=True) if durable else ()
        if not local and not guaranteed:
            return
        data: dict[str, Any] = {
            "queue": self.mgr.queue.name,
            "job_id": job_id,
            "job_name": name,
            "attempts": attempts,
        }
        if extra:
            data.update(extra)
        eid = new_event_id()
        body = event_body(event, int(time.time() * 1000), data)
        self._submit_local(local, eid, event, body)
        if guaranteed:
            task = asyncio.get_running_loop().create_task(
                Outbox(self.mgr.queue).add("webhook", {"i": eid, "e": event, "b": body})
            )
            self._writes.add(task)
            task.add_done_callback(self._written)

    def _submit_local(self, hooks: Sequence[Any], eid: str, event: str, body: bytes) -> None:
        for hook in hooks:
            self.mgr.local.submit(
                Delivery(
                    f"{hook.id}/{eid}",
                    self.mgr.target_of(hook),
                    event,
                    body,
                    hook.delivery_strategy.value,
                    hook.max_retries,
                )
            )

    def _written(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a webhook event could not be written to the outbox: %s", task.exception())

    @staticmethod
    def _job(job: Any) -> tuple[str, str, int]:
        return (
            str(getattr(job, "id", "")),
            str(getattr(job, "name", "")),
            int(getattr(job, "attempts", 0) or 0),
        )

    # ------------------------------------------------------------------ hooks
    def quiet_outcomes(self) -> str:
        """Outcome codes no local endpoint wants (the worker then skips building them)."""
        reg = self.mgr.registry
        return "DH" + "".join(
            c for c, ev in _CODES.items() if not reg.wanting(ev, guaranteed=False)
        )

    def enqueued(self, queue: str, job_ids: Sequence[str], names: Sequence[str]) -> None:
        self._fresh()
        if not self.mgr.registry.wanting("job-added", guaranteed=False):
            return
        for job_id, name in zip(job_ids, names, strict=False):
            self._emit("job-added", str(job_id), str(name), 0)

    def _quiet(self, event: str) -> bool:
        """No endpoint wants ``event`` (checked first: this runs once per job)."""
        self._fresh()
        reg = self.mgr.registry
        return not reg.wanting(event, guaranteed=False) and not reg.wanting(event, guaranteed=True)

    def started(self, queue: str, job: Any) -> None:
        if not self._quiet("job-started"):
            self._emit("job-started", *self._job(job), durable=True)

    def progress(self, queue: str, job: Any, value: Any) -> None:
        if self._quiet("job-progress"):
            return
        try:
            encoded = orjson.dumps(value)
        except TypeError:
            encoded = b"null"
        if self._withheld(job, encoded):
            extra: dict[str, Any] = {"progress_withheld": True}
        elif len(encoded) <= _MAX_PROGRESS_BYTES:
            extra = {"progress": orjson.loads(encoded)}
        else:
            extra = {"progress_truncated": True}
        self._emit("job-progress", *self._job(job), extra=extra, durable=True)

    def _withheld(self, job: Any, encoded: bytes) -> bool:
        """Whether the queue's job-text filters rewrite this progress value as stored (a
        feature seals or masks it): its value then neither leaves the process nor goes
        to the outbox in clear."""
        for fn in self.mgr.queue.job_texts.filters:
            ask = getattr(fn, "rewrites", None)
            try:
                if (
                    ask(job, "progress")
                    if callable(ask)
                    else fn(job, "progress", encoded) != encoded
                ):
                    return True
            except Exception:  # a failing filter: withheld all the same
                return True
        return False

    def finished(self, queue: str, job: Any, outcome: Outcome) -> None:
        event = _BY_OUTCOME.get(outcome.kind)
        if event:
            self._emit(event, *self._job(job))

    def stalled(self, queue: str, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            self._emit("job-stalled", str(job_id), "", 0)

    def dead_lettered(self, queue: str, job_id: str, job: Any, reason: str | None) -> None:
        name = str(getattr(job, "name", "")) if job is not None else ""
        self._emit("job-dlq", str(job_id), name, int(getattr(job, "attempts", 0) or 0))

    def removed(self, queue: str, job_id: str) -> None:
        self._emit("job-removed", str(job_id), "", 0)

    def feature_event(self, event: FeatureEvent) -> None:
        """Another feature's event (a workflow's end, a breaker's change), reported in
        process: to the reliable and best-effort endpoints that want it. Guaranteed
        endpoints got it from the script that raised it (the ``event`` Lua slot)."""
        self._fresh()
        local = self.mgr.registry.wanting(event.name, guaranteed=False)
        if not local:
            return
        body = event_body(
            event.name,
            event.at_ms or int(time.time() * 1000),
            feature_event_data(event.queue, event.subject, event.fields),
        )
        self._submit_local(local, new_event_id(), event.name, body)
