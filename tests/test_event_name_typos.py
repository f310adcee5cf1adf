"""A misspelt event name is refused where it is registered, with the likely name.

``queue.on("completed", h)`` (another library's spelling), ``"job_completed"``,
``"JOB_COMPLETED"`` or a webhook endpoint subscribed to ``"job-complete"`` used to be
accepted and then never called: an alert wired that way was silently dead. Now
``EventEmitter.on`` and ``WebhookConfig`` events go through ``events.check_event_name``:
a known name (the core's ``QueueEvent``, the events features declare with
``declare_events`` when their modules are loaded, webhook event types) passes; a name
that only differs from one in case, ``_`` / ``-`` / spaces, a missing ``job-`` prefix, a
missing final ``d`` / ``ed`` / ``ing``, or by one or two edits is a ``ConfigurationError``
naming it and saying "did you mean ...". A lowercase name of one's own that is close to
no known one (``invoice-paid``) is still taken, as the docs promise; one close to a known
name is taken once declared on purpose. Against a real Redis: correctly spelt handlers
and endpoints still get their events.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from helpers import wait_until
from kitium_queue import ConfigurationError, JobQueue, QueueEvent
from kitium_queue import events as events_mod
from kitium_queue.events import (
    EventData,
    EventEmitter,
    check_event_name,
    declare_events,
    known_events,
)
from kitium_queue.features.webhooks import (
    JobWebhookConfig,
    WebhookConfig,
    WebhookEvent,
    WebhookManager,
    generate_secret,
)

pytestmark = pytest.mark.redis_only

LOOPBACK = ["127.0.0.0/8"]
FAST = dict(allow_networks=LOOPBACK, backoff_ms=20, max_backoff_ms=200, poll_ms=10)

#: (misspelt name, the name it should have been): every one used to be accepted silently.
MISSPELT = [
    ("completed", "job-completed"),  # BullMQ's name
    ("job_completed", "job-completed"),
    ("JOB_COMPLETED", "job-completed"),
    ("Job Completed", "job-completed"),
    ("jobCompleted", "job-completed"),
    ("job-complete", "job-completed"),
    ("job-compelted", "job-completed"),  # two letters swapped
    ("complted", "job-completed"),
    ("failed", "job-failed"),
    ("job-fail", "job-failed"),
    ("dlq", "job-dlq"),
    ("job-retry", "job-retrying"),
    ("progress", "job-progress"),
    ("queue_error", "queue-error"),
]

#: Names of one's own a reviewer found refused as misspellings (two edits from a known
#: name, or one at the start of the word): each is another word, taken as it is.
OWN_NAMES = [
    "job-restarted",  # job-started with "re" before it
    "job-stored",  # (job-started)
    "job-sorted",
    "job-filled",  # (job-failed)
    "job-mailed",
    "job-fixed",
    "job-waited",
    "job-d",  # (job-dlq)
]
#: The misspellings those same rules must still refuse, feature events included.
STILL_REFUSED = [
    ("completed", "job-completed"),
    ("job_completed", "job-completed"),
    ("JOB_COMPLETED", "job-completed"),
    ("jobCompleted", "job-completed"),
    ("job-complete", "job-completed"),
    ("job-compelted", "job-completed"),
    ("dlq", "job-dlq"),
    ("job-retry", "job-retrying"),
    ("workflow-complete", "workflow-completed"),
    ("workflow-cancelled", None),  # known: taken
    ("workflow-canceled", "workflow-cancelled"),
    ("breaker-stat", "breaker-state"),
]


@pytest.fixture
async def queue(redis_url: str, prefix: str) -> AsyncIterator[JobQueue]:
    q = JobQueue("typos", redis=redis_url, prefix=prefix, worker={"scheduler": False})

    @q.process("charge")
    async def charge(job: Any) -> str:
        return "ok"

    yield q
    await q.close()


@pytest.fixture
def known(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The process's known event names, restored after the test (it declares some)."""
    saved = dict(events_mod._KNOWN)
    monkeypatch.setattr(events_mod, "_KNOWN", saved)
    return saved


# ---------------------------------------------------------------------- queue.on
@pytest.mark.parametrize(("bad", "meant"), MISSPELT)
def test_misspelt_handler_name_is_refused_with_the_likely_one(
    queue: JobQueue, bad: str, meant: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        queue.on(bad, lambda e: None)
    msg = str(err.value)
    assert f"queue.on: no event is named {bad!r}" in msg
    assert f"(did you mean {meant!r}?)" in msg
    assert not queue.emitter.wants(bad)  # nothing was registered


async def test_correct_handlers_still_run_once_misspelt_ones_are_refused(
    queue: JobQueue,
) -> None:
    got: list[str] = []
    for bad, _ in MISSPELT[:3]:
        with pytest.raises(ConfigurationError):
            queue.on(bad, lambda e, bad=bad: got.append(bad))
    queue.on("job-completed", lambda e: got.append(f"{e.event} {e.result}"))
    queue.on(QueueEvent.JOB_COMPLETED, lambda e: got.append("enum"))

    job_id = await queue.add_job("charge", {})
    await queue.start()
    await wait_until(lambda: len(got) >= 2, 10)
    assert got == ["job-completed ok", "enum"]
    assert (await queue.get_job_status(job_id)).status == "completed"


def test_a_name_of_ones_own_is_taken_and_a_non_name_refused(queue: JobQueue) -> None:
    for name in ("invoice-paid", "order.shipped", "app:ping"):
        queue.on(name, lambda e: None)
        assert queue.emitter.wants(name)
    with pytest.raises(ConfigurationError, match="is not an event name"):
        queue.on("Invoice Paid!", lambda e: None)
    with pytest.raises(ConfigurationError, match="is not an event name"):
        queue.on(42, lambda e: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a function"):  # still checked first
        queue.on("job-completed", 42)  # type: ignore[arg-type]


async def test_a_name_close_to_a_known_one_is_taken_once_declared(
    queue: JobQueue, known: dict[str, str]
) -> None:
    with pytest.raises(ConfigurationError) as err:
        queue.on("job-compete", lambda e: None)
    assert "declare_events('my-app', 'job-compete')" in str(err.value)
    declare_events("my-app", "job-compete")
    got: list[EventData] = []
    queue.on("job-compete", got.append)
    queue.emitter.emit(EventData("job-compete", queue.name))
    assert [e.event for e in got] == ["job-compete"]
    assert known_events()["job-compete"] == "my-app"
    with pytest.raises(ConfigurationError, match="not an event name"):
        declare_events("my-app", "Job Compete")


def test_a_name_declared_after_a_close_handler_is_warned_about(
    queue: JobQueue, known: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A feature loaded after the handler was added (the scheduler loads at start()):
    the misspelling can no longer be refused, it is logged."""
    queue.on("widget-change", lambda e: None)  # close to nothing known yet: taken
    with caplog.at_level(logging.WARNING, logger="kitium_queue.events"):
        declare_events("widgets", "widget-changed")
    (rec,) = [r for r in caplog.records if "widget-change" in r.getMessage()]
    assert "did you mean 'widget-changed'" in rec.getMessage()
    assert "(by widgets)" in rec.getMessage()


@pytest.mark.parametrize("name", OWN_NAMES)
def test_a_word_of_ones_own_near_a_known_one_is_taken(queue: JobQueue, name: str) -> None:
    got: list[str] = []
    queue.on(name, lambda e: got.append(e.event))
    assert queue.emitter.wants(name)
    queue.emitter.emit(EventData(name, queue.name))
    assert got == [name]
    assert check_event_name(name, "webhook event") == name


@pytest.mark.parametrize(("bad", "meant"), STILL_REFUSED)
def test_the_misspellings_are_still_refused_beside_those_names(
    queue: JobQueue, bad: str, meant: str | None
) -> None:
    from kitium_queue import CircuitBreakerManager, JobChainManager  # noqa: F401

    if meant is None:
        queue.on(bad, lambda e: None)
        assert queue.emitter.wants(bad)
        return
    with pytest.raises(ConfigurationError, match=f"did you mean {meant!r}"):
        queue.on(bad, lambda e: None)
    assert not queue.emitter.wants(bad)


# ---------------------------------------------------------------------- threads
def test_a_handler_added_while_declared_names_are_rechecked_breaks_nothing(
    known: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``declare_events`` (a feature module imported in one thread) rechecks an emitter's
    handlers while ``on`` adds one in another thread: here the add lands between two of
    the names the recheck reads, as a thread switch would make it."""
    emitter = EventEmitter()
    emitter.on("gadget-change", lambda e: None)
    emitter.on("gadget-other", lambda e: None)
    real, added = events_mod.misspelt, []

    def misspelt_and_meanwhile(name: str, known_names: Any) -> str | None:
        if name.startswith("gadget-") and not added:  # this emitter's recheck
            added.append(name)
            emitter.on("gadget-third", lambda e: None)  # "the other thread"
        return real(name, known_names)

    monkeypatch.setattr(events_mod, "misspelt", misspelt_and_meanwhile)
    with caplog.at_level(logging.WARNING, logger="kitium_queue.events"):
        declare_events("gadgets", "gadget-changed")  # raised RuntimeError before
    assert added and emitter.wants("gadget-third")
    assert [r for r in caplog.records if "'gadget-change'" in r.getMessage()]


class _PausingSet(weakref.WeakSet[EventEmitter]):
    """The set of emitters, whose iteration stops after its first item until
    ``resume`` is set (``timeout`` s at most), having set ``paused``."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.paused, self.resume, self.timeout = threading.Event(), threading.Event(), timeout

    def __iter__(self) -> Iterator[EventEmitter]:
        for n, item in enumerate(super().__iter__()):
            yield item
            if n == 0:
                self.paused.set()
                self.resume.wait(self.timeout)


def test_an_emitter_made_in_another_thread_while_names_are_declared(
    known: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feature module imported in one thread declares its names while another thread
    makes a queue (an emitter): that emitter waits until the declaration has read the
    set of emitters, rather than change it under it ("Set changed size during
    iteration" failed the import)."""
    emitters = _PausingSet(timeout=1.0)
    monkeypatch.setattr(events_mod, "_EMITTERS", emitters)
    first = EventEmitter()
    made: list[EventEmitter] = []

    def make_one() -> None:
        assert emitters.paused.wait(10)
        made.append(EventEmitter())
        emitters.resume.set()

    other = threading.Thread(target=make_one)
    other.start()
    try:
        declare_events("late-feature", "late-event")  # pauses in its read of the set
    finally:
        emitters.resume.set()
        other.join(10)
    assert not other.is_alive()
    assert set(emitters) == {first, *made} and len(made) == 1
    assert known_events()["late-event"] == "late-feature"


# ---------------------------------------------------------------------- feature events
def test_the_core_lists_no_feature_event_features_declare_theirs() -> None:
    """In a fresh interpreter: the core knows only QueueEvent; loading a feature adds
    its events (declared in its own module)."""
    code = """
import json
from kitium_queue.events import known_events
core = sorted(known_events())
from kitium_queue import CircuitBreakerManager, JobChainManager
print(json.dumps([core, sorted(set(known_events()) - set(core))]))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    core, added = json.loads(out.stdout)
    assert core == sorted(e.value for e in QueueEvent)
    assert added == ["breaker-state", "workflow-cancelled", "workflow-completed", "workflow-failed"]


def test_feature_events_are_taken_and_their_misspellings_refused(queue: JobQueue) -> None:
    from kitium_queue import CircuitBreakerManager, JobChainManager  # noqa: F401

    for name in ("workflow-completed", "breaker-state"):
        queue.on(name, lambda e: None)
        assert queue.emitter.wants(name)
    for bad, meant in (("workflow_completed", "workflow-completed"),
                       ("breaker-stat", "breaker-state")):  # fmt: skip
        with pytest.raises(ConfigurationError, match=f"did you mean {meant!r}"):
            queue.on(bad, lambda e: None)
    assert check_event_name("workflow-failed") == "workflow-failed"


# ---------------------------------------------------------------------- webhooks
@pytest.mark.parametrize(
    ("bad", "meant"), [*MISSPELT[:6], ("workflow-complete", "workflow-completed")]
)
async def test_misspelt_webhook_event_is_refused_and_nothing_stored(
    queue: JobQueue, bad: str, meant: str
) -> None:
    m = WebhookManager(queue, **FAST)
    cfg = WebhookConfig(
        url="http://127.0.0.1:9/hook", events=["job-failed", bad], delivery_strategy="guaranteed"
    )
    with pytest.raises(ConfigurationError) as err:
        await m.register_webhook(cfg)
    assert f"webhook event: no event is named {bad!r} (did you mean {meant!r}?)" in str(err.value)
    assert await m.list_webhooks() == []


async def test_correct_webhook_still_delivers_and_a_custom_event_too(
    queue: JobQueue, receiver: Any
) -> None:
    m = WebhookManager(queue, **FAST)
    secret = generate_secret()
    hook = await m.register_webhook(
        WebhookConfig(
            url=receiver.url,
            secret=secret,
            events=["job-completed", "invoice-paid", "workflow-failed"],
            delivery_strategy="guaranteed",
        )
    )
    assert hook.events == ("job-completed", "invoice-paid", "workflow-failed")
    await queue.start()
    job_id = await queue.add_job("charge", {})
    await m.send_event(WebhookEvent("invoice-paid", {"invoice": 7}))
    await wait_until(lambda: len(receiver.ok()) >= 2, 15)
    bodies = {r.json()["type"]: r.json()["data"] for r in receiver.ok()}
    assert bodies["job-completed"]["job_id"] == job_id
    assert bodies["invoice-paid"] == {"invoice": 7}


async def test_update_refuses_a_misspelling_but_reads_one_stored_before(
    queue: JobQueue, redis_client: Any
) -> None:
    m = WebhookManager(queue, **FAST)
    hook = await m.register_webhook(WebhookConfig(url="http://127.0.0.1:9/hook", id="old"))
    with pytest.raises(ConfigurationError, match="did you mean 'job-failed'"):
        await m.update_webhook("old", events=["job-completed", "job_failed"])
    # A registration stored before names were checked, with a misspelt event: it stays
    # readable and updatable; only new names are checked.
    stored = json.loads(hook.to_json())
    stored["events"] = ["job-complete"]
    await redis_client.hset(m._keys["hooks"], "old", json.dumps(stored))
    (read,) = await m.list_webhooks()
    assert read.events == ("job-complete",)
    changed = await m.update_webhook("old", description="kept")
    assert changed.events == ("job-complete",) and changed.description == "kept"
    fixed = await m.update_webhook("old", events=["job-completed"])
    assert fixed.events == ("job-completed",)


def test_job_webhook_events_are_checked_too(queue: JobQueue) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'job-failed'"):
        WebhookManager(queue, job_webhook=JobWebhookConfig(events=["job-completed", "fail"]))
