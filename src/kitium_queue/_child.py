"""Child process of ``ProcessPool``: reads job frames on stdin, writes outcome frames.

Started by ``procpool`` (``procpool._BOOT``: ``main(spec)`` with the worker's pid as
``sys.argv[1]``); ``python -m kitium_queue._child`` runs it too. Anything the processor
prints goes to stderr; stdout carries only frames. The frames are read from a private
copy of stdin, and the processor's stdin (``sys.stdin``, ``input()``, what a
``subprocess`` it starts inherits) reads from ``os.devnull``: it ends at once, as under a
service manager, instead of waiting for ever on the worker's pipe (or taking the next
job's frame from it).

The rules are those of a run in the worker's own process (async and thread mode):

* a result or a progress value is encoded by the codec's own ``Serializer`` (the
  round-trip rule of ``codec``): a result it refuses is sent back as ``refused`` with the
  ``SerializationError`` text, and the parent fails the job for good with that reason
  (``codec.RefusedValue``); ``update_progress_sync`` raises ``SerializationError`` (or
  ``PayloadTooLargeError``) in the processor, as ``update_progress`` does in-process;
* every text sent (an error's message and traceback, a log line) is made safe the way
  ``outcomes`` makes it for the in-process modes: an exception whose ``__str__`` raises
  is described by its type, lone surrogates become backslash escapes (``r-\\udcff.csv``),
  so writing a frame never fails and the child survives whatever the processor raised
  (a ``BaseException`` that is not an ``Exception`` is a failure like any error;
  ``KeyboardInterrupt`` and ``SystemExit`` end the child, which the parent reports as
  ``ChildProcessDied``). Raised while the processor's module is imported (``argparse``
  or ``sys.exit()`` at its top level), they fail the job with a reason naming the
  module instead, and the child serves on (``_import_exit_frame``).

How it lives (``procpool``): SIGINT and SIGTERM are ignored (a signal to the worker's
whole process group stops the worker, which ends its children itself), and restored in
a process the processor forks (``os.fork``, ``multiprocessing``); one it executes gets
them back anyway. It dies with the worker: ``PR_SET_PDEATHSIG`` (SIGKILL) on Linux, a
thread watching its parent elsewhere. Its whole process group dies with it: a guard
process (``_guard_group``), in the group but not a child of this one, kills the group
(SIGKILL) as soon as this child has ended, however it ended (its worker killed outright,
``os._exit`` in a processor), so nothing the processor started (a ``subprocess``, a
forked helper) runs on beside the job's retry elsewhere. The guard runs none of this
child's code: a processor stuck in C code that holds the GIL cannot delay it, and
nothing is installed here that a process the processor forks or executes would inherit
(a forked process does not inherit the parent-death signal either). Progress and log
frames carry the run's token, and a ``ChildJob`` refuses them (``LeaseLostError``, as
in-process) once its run ended. Context a process middleware carried with the job (the
run's trace context) is entered before the processor and left after it, also when it
raised (``carried``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import os
import select
import signal
import struct
import sys
import threading
import time
from typing import Any, BinaryIO

import orjson

from . import carried
from .codec import Serializer, encode_progress
from .errors import (
    LeaseLostError,
    NonRetryableError,
    RateLimited,
    RetryLater,
    SerializationError,
)
from .limits import (
    MAX_ERROR_CHARS,
    MAX_LOG_LINE_CHARS,
    clamp_delay_ms,
    safe_text,
    wire_text,
)
from .outcomes import describe, safe_name, traceback_text

_LEN = struct.Struct("!I")
#: Encodes results and progress values: plain JSON (the parent applies the queue's
#: codecs), checked like job data.
_JSON = Serializer(())
_START = b'{"t":"start"}'
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Ignored by the guard of a child's group (``_guard_group``): signals a processor may
#: send its own group to end or to poke what it started.
_GUARD_IGNORES = tuple(
    getattr(signal, name)
    for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)
#: How often the guard checks that the child still runs where it cannot wait for its
#: end (no ``os.pidfd_open``: not Linux, or a kernel before 5.3).
_GUARD_POLL_S = 0.25


class ChildJob:
    """The job a processor receives in a child process (the fields of ``Job``).

    ``lease_token`` is the run's lease token, as ``Job.lease_token`` (read-only): pass it
    to ``IdempotencyManager.record_execution(..., lease_token=job.lease_token)``, which
    cannot tell from a child process which run calls it.

    ``update_progress_sync`` and ``log_sync`` are forwarded to the parent, which records
    them under the job's lease; once the processor returned they raise
    ``LeaseLostError`` (a thread it left behind cannot write into a later job).
    """

    def __init__(self, fields: dict[str, Any], out: BinaryIO, run: int = 0) -> None:
        self.id: str = fields["id"]
        self.name: str = fields["name"]
        self.data: Any = fields["data"]
        self.attempts: int = fields["attempts"]
        self.max_attempts: int = fields["max_attempts"]
        self.created_at: int = fields["created_at"]
        self.options: dict[str, Any] = fields["options"]
        self.idempotency_key: str = fields["idempotency_key"]
        self.queue_name: str = fields["queue_name"]
        # Kept in the instance's dict, so ``vars(job)`` lists it with the other fields;
        # the property below (a data descriptor, read first) makes it read-only.
        self.__dict__["lease_token"] = str(fields.get("lease_token", ""))
        self.progress: Any = None
        self._out = out
        self._run = run
        #: The processor has not returned yet.
        self.live = True

    @property
    def lease_token(self) -> str:
        """The fencing token of this run's lease (``Job.lease_token``)."""
        token: str = self.__dict__["lease_token"]
        return token

    def update_progress_sync(self, value: Any) -> None:
        """Record progress; raises ``SerializationError`` for a value JSON would change
        and ``PayloadTooLargeError`` above ``MAX_PROGRESS_BYTES``, as in-process."""
        self._check_live()
        self.progress = value
        raw = encode_progress(self.id, value)
        _send(self._out, b'{"t":"progress","r":%d,"v":%b}' % (self._run, raw))

    def log_sync(self, message: str) -> None:
        """Append a log line to the job."""
        self._check_live()
        _write(self._out, {"t": "log", "r": self._run, "v": _text(message, MAX_LOG_LINE_CHARS)})

    def _check_live(self) -> None:
        if not self.live:
            raise LeaseLostError(
                f"job {self.id} ({self.name}) has ended in this child process: its "
                "progress and log lines can no longer be recorded"
            )


def _text(value: object, limit: int) -> str:
    """``value`` as text that any frame can carry: ``safe_text`` (a raising ``__str__``
    gives a placeholder), clipped, lone surrogates written as backslash escapes
    (``limits.wire_text``, as recorded in-process)."""
    return wire_text(safe_text(value), limit).decode("utf-8")


def _send(out: BinaryIO, data: bytes) -> None:
    out.write(_LEN.pack(len(data)) + data)
    out.flush()


def _write(out: BinaryIO, msg: dict[str, Any]) -> None:
    _send(out, orjson.dumps(msg))


def _result_frame(result: Any) -> bytes:
    """The frame of a returned ``result``: the value encoded by the codec, or the
    refusal's text (``SerializationError``, which the parent raises again)."""
    try:
        raw = _JSON.dumps(result, "result")
    except SerializationError as exc:
        return orjson.dumps({"t": "refused", "msg": _text(exc, MAX_ERROR_CHARS)})
    return b'{"t":"result","v":' + raw + b"}"


def _error_frame(exc: BaseException) -> bytes:
    """The frame of an exception the processor raised. Never raises."""
    kind, delay = "error", 0
    if isinstance(exc, NonRetryableError):
        kind = "nonretryable"
    elif isinstance(exc, RetryLater):
        kind = "retrylater"
        try:
            delay = clamp_delay_ms(exc.delay_ms)
        except Exception as bad:  # a property of a subclass may even raise when read
            # As in-process (Runner.deferred): a delay that cannot be read fails for good.
            # (The text names the type already: sent as a NonRetryableError's.)
            why = f"{describe(exc)} with an invalid delay_ms ({describe(bad)})"
            return _error_dict(exc, "nonretryable", 0, why, "NonRetryableError")
    return _error_dict(exc, kind, delay, safe_text(exc), safe_name(exc))


def _error_dict(exc: BaseException, kind: str, delay: int, text: str, type_name: str) -> bytes:
    frame: dict[str, Any] = {
        "t": "error",
        "kind": kind,
        "delay": delay,
        "type": _text(type_name, 200),
        "msg": _text(text, MAX_ERROR_CHARS),
        "tb": traceback_text(exc).decode("utf-8"),
    }
    if kind == "retrylater" and isinstance(exc, RateLimited):
        # What the hold covers (queue, key, job): the parent raises RateLimited again.
        scope = getattr(exc, "scope", "auto")
        frame["scope"] = scope if scope in RateLimited.SCOPES else "auto"
    return orjson.dumps(frame)


def _resolve(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _import_exit_frame(path: str, exc: BaseException) -> bytes:
    """The error frame of a ``SystemExit`` (or ``KeyboardInterrupt``) raised while the
    processor ``path`` was imported: before, it ended the child, and each attempt
    started two children and failed with "a new child process exited before it started
    the processor", the module never named."""
    module = path.partition(":")[0]
    code = exc.code if isinstance(exc, SystemExit) else None
    if isinstance(exc, SystemExit) and (code is None or type(code) is int):
        what = f"SystemExit with exit code {code or 0}"
    else:
        what = describe(exc) if safe_text(exc) else safe_name(exc)
    text = (
        f"importing the processor's module {module!r} in the child process raised "
        f"{what}; the processor never ran. Code at the top level of that module that "
        "ends the process (argparse, sys.exit()) belongs under "
        "\"if __name__ == '__main__':\" or in a function"
    )
    return _error_dict(exc, "error", 0, text, safe_name(exc))


def _ignore_stop_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: sent to the worker's whole process group, they stop the worker,
    which ends this child itself (a handler, not ``SIG_IGN``: exec resets it)."""


def _restore_stop_signals() -> None:
    """In a process forked by the processor: SIGINT and SIGTERM act as usual again."""
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _shield_stop_signals() -> None:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _ignore_stop_signal)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_restore_stop_signals)


def _die_with_parent() -> None:
    """End with the worker's process (killed, crashed): a job running here would
    otherwise go on beside its run by the worker that took it over. The worker's pid is
    ``sys.argv[1]`` (nothing is done without it)."""
    try:
        parent = int(sys.argv[1])
    except (IndexError, ValueError):
        return
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it ended before the signal was armed
        os._exit(1)
    _guard_group()  # before any thread starts: it forks
    if not armed:
        threading.Thread(
            target=_watch_parent, args=(parent,), name="kq-parent-watch", daemon=True
        ).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    if os.getpgrp() == os.getpid():  # the leader of its own group (as ``procpool`` starts it)
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)  # this child and what its jobs started
    os._exit(1)


def _guard_group() -> None:
    """Start the guard of this child's process group: a process in the group, forked by
    a process that ends at once (so it is not this child's child, and a processor that
    reaps "any child" never meets it), which kills the whole group (SIGKILL) as soon as
    this child has ended. It waits for that end on a pidfd (Linux 5.3 and later), else
    checks every ``_GUARD_POLL_S``; the child's pid cannot be reused meanwhile, since
    the group still has the guard. Only a child leading a group of its own has one (as
    ``procpool`` starts it: one run by hand would kill its shell's group); without
    ``os.fork``, or when forking fails, the child runs without."""
    leader = os.getpid()
    if not hasattr(os, "fork") or os.getpgrp() != leader:
        return
    try:
        middle = os.fork()
    except OSError:
        return
    if middle == 0:
        try:
            watch = _pidfd(leader)  # opened while the child waits for this process
            if os.fork() == 0:
                _guard(leader, watch)
        finally:
            os._exit(0)  # the middle process (and the guard, should it ever return)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(middle, 0)


def _pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once it ended), or None where there is none."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        with contextlib.suppress(OSError):
            fd: int = pidfd_open(pid)
            return fd
    return None


def _guard(leader: int, watch: int | None) -> None:
    """The guard's life: wait until ``leader`` (the child) ended, then kill its group,
    the guard included."""
    for sig in _GUARD_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):  # the worker's pipes: the child's end of them stays its alone
        os.dup2(null, fd)
    os.close(null)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None).prctl(15, b"kq-group-guard", 0, 0, 0)  # PR_SET_NAME (ps, top)
    if watch is not None:
        poller = select.poll()
        poller.register(watch, select.POLLIN)
        while not poller.poll():
            pass
    else:
        while _running(leader):
            time.sleep(_GUARD_POLL_S)
    with contextlib.suppress(OSError):
        os.killpg(leader, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it runs, as another user's process (not expected here)
    return True


class _PackageInit:
    """Runs the package's ``__init__`` (left out at start: ``procpool._BOOT``) the first
    time an attribute of the package is asked for that is not one of its modules (``from
    kitium_queue import JobQueue`` in a processor's module): installed as the package's
    ``__getattr__``, removed before the ``__init__`` runs. Its modules import as usual
    meanwhile (each once: the package object stays the same)."""

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        self.spec = spec
        self.package = sys.modules[spec.name]

    def install(self) -> None:
        vars(self.package)["__getattr__"] = self.attribute

    def attribute(self, name: str) -> Any:
        where = self.spec.submodule_search_locations
        if importlib.machinery.PathFinder.find_spec(f"{self.spec.name}.{name}", where):
            # A module of the package (``from kitium_queue import job``): the import
            # system loads it when this says it is not there yet.
            raise AttributeError(name)
        if vars(self.package).get("__getattr__") == self.attribute:
            del vars(self.package)["__getattr__"]
            assert self.spec.loader is not None
            self.spec.loader.exec_module(self.package)
        return getattr(self.package, name)


def main(spec: importlib.machinery.ModuleSpec | None = None) -> None:
    """Serve jobs until stdin ends. ``spec``: the package's, when its ``__init__`` was
    left out at start (``procpool._BOOT``)."""
    _die_with_parent()
    _shield_stop_signals()
    if spec is not None:
        _PackageInit(spec).install()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the processor's prints go to stderr, never into the frame stream
    # The frames come on a copy of stdin only this loop reads (not inherited: os.dup);
    # the processor's stdin ends at once (module docstring).
    inp = os.fdopen(os.dup(0), "rb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    cache: dict[str, Any] = {}
    while True:
        head = inp.read(_LEN.size)
        if len(head) < _LEN.size:
            return
        msg = orjson.loads(inp.read(_LEN.unpack(head)[0]))
        for p in msg.get("path", []):
            if p not in sys.path:
                sys.path.append(p)
        job = None
        leaving: list[Any] = []
        try:
            fn = cache.get(msg["fn"])
            if fn is None:
                fn = cache[msg["fn"]] = _resolve(msg["fn"])
            job = ChildJob(msg["job"], out, msg.get("run", 0))
            if "ctx" in msg:  # context carried by a process middleware (``carried``)
                leaving = carried.enter(msg["ctx"])
            # Sent once the processor is at hand (its module imported), just before it
            # runs: the parent's timeout of the run counts from here, and a child that
            # ends before this frame never started the job, which runs elsewhere.
            _send(out, _START)
            frame = _result_frame(fn(job))
        except (KeyboardInterrupt, SystemExit) as exc:
            if job is not None:
                raise  # end the child, as they end the worker's process in-process
            # Raised while importing the processor's module: the job fails saying so.
            _send(out, _START)
            frame = _import_exit_frame(msg["fn"], exc)
        except BaseException as exc:  # a custom abort signal too: a failure like any error
            if job is None:
                _send(out, _START)  # the processor cannot be had: the job fails with why
            frame = _error_frame(exc)
        finally:
            if leaving:
                carried.leave(leaving)
            if job is not None:
                job.live = False
        _send(out, frame)


if __name__ == "__main__":
    main()
