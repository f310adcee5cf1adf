"""Child process of ``ProcessPool``: reads job frames on stdin, writes outcome frames.

Run as ``python -m kitium_queue._child``. Anything the processor prints goes to stderr;
stdout carries only frames.

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
  ``ChildProcessDied``).
"""

from __future__ import annotations

import importlib
import os
import struct
import sys
from typing import Any, BinaryIO

import orjson

from .codec import Serializer, encode_progress
from .errors import NonRetryableError, RateLimited, RetryLater, SerializationError
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


class ChildJob:
    """The job a processor receives in a child process (the fields of ``Job``).

    ``update_progress_sync`` and ``log_sync`` are forwarded to the parent, which records
    them under the job's lease.
    """

    def __init__(self, fields: dict[str, Any], out: BinaryIO) -> None:
        self.id: str = fields["id"]
        self.name: str = fields["name"]
        self.data: Any = fields["data"]
        self.attempts: int = fields["attempts"]
        self.max_attempts: int = fields["max_attempts"]
        self.created_at: int = fields["created_at"]
        self.options: dict[str, Any] = fields["options"]
        self.idempotency_key: str = fields["idempotency_key"]
        self.queue_name: str = fields["queue_name"]
        self.progress: Any = None
        self._out = out

    def update_progress_sync(self, value: Any) -> None:
        """Record progress; raises ``SerializationError`` for a value JSON would change
        and ``PayloadTooLargeError`` above ``MAX_PROGRESS_BYTES``, as in-process."""
        self.progress = value
        raw = encode_progress(self.id, value)
        _send(self._out, b'{"t":"progress","v":' + raw + b"}")

    def log_sync(self, message: str) -> None:
        _write(self._out, {"t": "log", "v": _text(message, MAX_LOG_LINE_CHARS)})


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


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the processor's prints go to stderr, never into the frame stream
    inp = sys.stdin.buffer
    cache: dict[str, Any] = {}
    while True:
        head = inp.read(_LEN.size)
        if len(head) < _LEN.size:
            return
        msg = orjson.loads(inp.read(_LEN.unpack(head)[0]))
        # Acknowledged before anything runs: a child that ends before this frame (one
        # that died while idle) never started the job, which the parent runs elsewhere.
        _send(out, b'{"t":"start"}')
        for p in msg.get("path", []):
            if p not in sys.path:
                sys.path.append(p)
        try:
            fn = cache.get(msg["fn"])
            if fn is None:
                fn = cache[msg["fn"]] = _resolve(msg["fn"])
            frame = _result_frame(fn(ChildJob(msg["job"], out)))
        except (KeyboardInterrupt, SystemExit):
            raise  # end the child, as they end the worker's process in-process
        except BaseException as exc:  # a custom abort signal too: a failure like any error
            frame = _error_frame(exc)
        _send(out, frame)


if __name__ == "__main__":
    main()
