"""The event loop's watchdog: a worker's loop blocked by the code it runs, said and counted.

A worker's lease renewals, claims and outcome flushes all run on its event loop. Code
that blocks the loop (a plain ``def`` event handler or hook doing slow work, an ``async
def`` processor calling ``time.sleep`` or a blocking client) holds them all up: past
``lock_duration`` a lease expires and another worker may run the job a second time
while the first run goes on.

``LoopWatch`` runs while the worker's renewals do (``leases.Leases.renew``):

* a **beat** on the loop (``loop.call_later`` every ``BEAT_S``; a few microseconds, no
  cost per job) notes when the next beat is due;
* a **daemon thread** looks every few tens of ms; once the due beat is late by the
  threshold, it takes the loop thread's stack (``sys._current_frames``: file, line and
  function of each frame, never a local or an argument, which may hold a payload);
* a late beat whose wait found the loop idle in its selector (the process was starved
  of CPU, or stopped), or in which no stack could be taken (a C call holding the GIL
  throughout), is counted as ``starved`` and not said: only code found running is blamed;
* the next beat, once the loop runs again, sees how late it came (the loop was blocked
  at least that long), counts the episode (``blocked``, ``longest_ms``; metrics
  ``worker.loop_blocked`` and ``worker.loop_blocked_ms``) and logs ONE warning naming the
  innermost frames outside asyncio and kitium-queue (at most one line per
  ``HUSH_S``, with the count of the episodes said in no line).

The threshold is ``worker={"loop_block_warn": ms}``: by default half the renewal
interval, between 100 ms and 1 s (``default_threshold``); 0 turns the watchdog off (no
thread). The thread ends with the worker's stop, or when the loop is closed; a process
forked while it runs owns none of it (the child's beat ends, and no thread was copied).
The workers of one loop with one threshold (a partitioned queue's) share one beat and
one thread: each counts an episode, one says it, another takes them over at a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .limits import Hush, get_logger
from .options import to_ms

if TYPE_CHECKING:
    from types import FrameType

    from .options import WorkerConfig
    from .queue import JobQueue

__all__ = ["BEAT_S", "HUSH_S", "LoopWatch", "check_option", "default_threshold"]

# The worker's logger, as for the other lease warnings (leases.py).
log = get_logger("kitium_queue.worker")

#: Seconds between two beats of the loop.
BEAT_S = 0.1
#: At most one warning line per this many seconds (the others counted in the next one).
HUSH_S = 30.0
#: Frames a warning names at most, innermost first.
MAX_FRAMES = 5
_PKG = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ASYNCIO = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
_SKIPPED = (_PKG, _ASYNCIO)
_SELECTORS = os.sep + "selectors.py"

Where = tuple[str, int, str]  # file, line, function

#: The running watches of each (loop, threshold), the one running the beat and the thread
#: first (a partitioned queue's workers share them: one thread, not one per partition).
_PEERS: dict[tuple[asyncio.AbstractEventLoop, int], list[LoopWatch]] = {}


def check_option(config: WorkerConfig) -> None:
    """Refuse a ``worker.loop_block_warn`` that is not a duration (ms or ``timedelta``)
    of 0 or more; it becomes whole ms (None stays None: ``default_threshold``)."""
    ms = to_ms(config.loop_block_warn, "worker.loop_block_warn", allow_none=True)
    object.__setattr__(config, "loop_block_warn", ms)


def default_threshold(lock_renew_ms: int) -> int:
    """The threshold (ms) when none is set: half the renewal interval, 100 ms to 1 s."""
    return max(100, min(1000, lock_renew_ms // 2))


def stack_of(frame: FrameType | None) -> list[Where]:
    """Code locations of ``frame`` and its callers, innermost first: the innermost run of
    frames outside asyncio and kitium-queue (the code that blocked, up to the function
    the library called: a processor, a handler), or the innermost frames when all are
    inside them. At most ``MAX_FRAMES``: of a longer run, the innermost ones and the two
    outermost, an ``...`` entry between. Nothing but file, line and function is read."""
    where: list[Where] = []
    while frame is not None:
        code = frame.f_code
        where.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    first = next((i for i, w in enumerate(where) if not w[0].startswith(_SKIPPED)), None)
    if first is None:
        return where[:MAX_FRAMES]
    run = list(itertools.takewhile(lambda w: not w[0].startswith(_SKIPPED), where[first:]))
    if len(run) <= MAX_FRAMES:
        return run
    return [*run[: MAX_FRAMES - 3], ("...", 0, "..."), *run[-2:]]


def _said(stack: list[Where] | None) -> str:
    if not stack:
        return "(its stack could not be taken)"
    return " <- ".join("..." if line == 0 else f"{fn} ({file}:{line})" for file, line, fn in stack)


class LoopWatch:
    """The watchdog of one worker's event loop (module docstring).

    Attributes:
        threshold_ms: how late a beat may come before it counts as blocked (0: off).
        blocked: blocked episodes seen since the worker started.
        longest_ms: the longest of them (ms; at least that long).
    """

    def __init__(self, queue: JobQueue, worker_id: str) -> None:
        self.queue_name = queue.name
        self.worker_id = worker_id
        self.renew_ms, self.lease_ms = queue.lock_renew_ms, queue.lock_duration_ms
        self._metrics = queue.ctx.metrics
        told = queue.worker_config.loop_block_warn  # whole ms once checked (check_option)
        self.threshold_ms = (
            default_threshold(self.renew_ms) if told is None else to_ms(told, "loop_block_warn")
        )
        self.blocked = 0
        self.longest_ms = 0
        self._hush = Hush()
        self._pid = 0  # the process that runs it (0: not running)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._end = threading.Event()
        # (beat number, monotonic time the next beat is due): one tuple, read whole.
        self._beat = (0, 0.0)
        # Taken during that beat's wait (None for the stack: the loop was idle in I/O).
        self._stack: tuple[int, list[Where] | None] | None = None
        #: Late beats not blamed on code: the loop was found waiting for I/O (the process
        #: was starved of CPU or stopped) or no stack could be taken; never warned about.
        self.starved = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Watch the running loop while the block runs (nothing when the threshold is 0)."""
        if self.threshold_ms <= 0:
            yield
            return
        self.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            self.stop()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch ``loop`` (which runs in this thread). The watches of one loop with one
        threshold (the workers of a partitioned queue) share one beat and one thread,
        run by the first of them: each counts a blocked episode, the one running them
        says it."""
        self.stop()
        for closed in [k for k in list(_PEERS) if k[0].is_closed()]:  # never stopped
            _PEERS.pop(closed, None)
        self._loop = loop
        peers = _PEERS.setdefault((loop, self.threshold_ms), [])
        peers.append(self)
        if len(peers) == 1:
            self._drive(loop)

    def _drive(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the beat on ``loop`` and the thread for this watch and its peers."""
        self._pid, self._loop, self._end = os.getpid(), loop, threading.Event()
        self._beat = (self._beat[0] + 1, time.monotonic() + BEAT_S)
        self._handle = loop.call_later(BEAT_S, self._on_beat)
        self._thread = threading.Thread(
            target=self._watch,
            args=(loop, threading.get_ident(), self._end),
            name=f"kq-loopwatch-{self.queue_name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """End the beat and the thread (waits for the thread, which ends at once); a
        peer still watching the loop runs them from then on."""
        loop, driving = self._loop, self._pid == os.getpid()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._end.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive() and driving:
            thread.join(1.0)
        self._pid, self._loop = 0, None
        if loop is None:
            return
        peers = _PEERS.get((loop, self.threshold_ms), [])
        if self in peers:
            peers.remove(self)
            if not peers:
                _PEERS.pop((loop, self.threshold_ms), None)
            elif driving and not loop.is_closed():
                peers[0]._drive(loop)

    # ------------------------------------------------------------------ on the loop
    def _on_beat(self) -> None:
        if self._pid != os.getpid() or self._loop is None:
            return  # a forked child: the watchdog is its parent's
        now = time.monotonic()
        seq, due = self._beat
        self._beat = (seq + 1, now + BEAT_S)
        late_ms = int((now - due) * 1000)
        if late_ms >= self.threshold_ms:
            taken = self._stack
            for watch in _PEERS.get((self._loop, self.threshold_ms), [self]):
                if taken is not None and taken[0] == seq and taken[1] is not None:
                    watch._blocked(late_ms, taken[1], watch is self)
                else:  # the loop waited for I/O, or no stack could be taken: not code
                    watch.starved += 1
        self._handle = self._loop.call_later(BEAT_S, self._on_beat)

    def _blocked(self, ms: int, stack: list[Where] | None, say: bool = True) -> None:
        self.blocked += 1
        self.longest_ms = max(self.longest_ms, ms)
        if self._metrics is not None:
            tags = {"queue": self.queue_name}
            with contextlib.suppress(Exception):  # an adapter's failure costs the metric only
                self._metrics.increment("worker.loop_blocked", 1, tags)
                self._metrics.observe("worker.loop_blocked_ms", ms, tags)
        unsaid = self._hush.say(HUSH_S) if say else None
        if unsaid is None:
            return
        more = f" ({unsaid} more blocked episode(s) since the last warning)" if unsaid else ""
        log.warning(
            "worker %s: the event loop of queue %s was blocked for at least %d ms "
            "(loop_block_warn=%d ms), in: %s. Leases renew every lock_renew_time=%d ms on "
            "this loop: past lock_duration=%d ms another worker may run its jobs again. "
            "Make that code async or quick (an on(...) event handler, a hook, an async def "
            "processor must not block), or use a plain def processor, which runs in a "
            "thread%s",
            self.worker_id,
            self.queue_name,
            ms,
            self.threshold_ms,
            _said(stack),
            self.renew_ms,
            self.lease_ms,
            more,
        )

    # ------------------------------------------------------------------ the thread
    def _watch(self, loop: asyncio.AbstractEventLoop, tid: int, end: threading.Event) -> None:
        threshold_s = self.threshold_ms / 1000
        taken = -1  # the beat whose wait the stack was taken in
        while not end.wait(max(0.005, min(0.05, threshold_s / 4))):
            if loop.is_closed():
                return
            seq, due = self._beat
            if seq == taken or not loop.is_running() or time.monotonic() - due < threshold_s:
                continue
            taken = seq
            frames: dict[int, Any] = sys._current_frames()
            top = frames.get(tid)
            # Found waiting in the selector, the loop was not blocked by code: the process
            # was starved of CPU (or stopped) and the beat came late for that.
            idle = top is None or top.f_code.co_filename.endswith(_SELECTORS)
            stack = None if idle else stack_of(top)
            del frames, top  # no frame kept alive
            if self._beat[0] == seq:
                self._stack = (seq, stack)
