"""Child process of ``ProcessPool``: reads job frames on stdin, writes outcome frames.

Run as ``python -m kitium_queue._child``. Anything the processor prints goes to stderr;
stdout carries only frames.
"""

from __future__ import annotations

import importlib
import os
import struct
import sys
import traceback
from typing import Any, BinaryIO

import orjson

from .errors import NonRetryableError, RetryLater

_LEN = struct.Struct("!I")


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
        self.progress = value
        _write(self._out, {"t": "progress", "v": value})

    def log_sync(self, message: str) -> None:
        _write(self._out, {"t": "log", "v": str(message)})


def _write(out: BinaryIO, msg: dict[str, Any]) -> None:
    data = orjson.dumps(msg)
    out.write(_LEN.pack(len(data)) + data)
    out.flush()


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
        for p in msg.get("path", []):
            if p not in sys.path:
                sys.path.append(p)
        try:
            fn = cache.get(msg["fn"])
            if fn is None:
                fn = cache[msg["fn"]] = _resolve(msg["fn"])
            result = fn(ChildJob(msg["job"], out))
            try:
                _write(out, {"t": "result", "v": result})
            except TypeError as exc:
                _write(
                    out,
                    {
                        "t": "error",
                        "kind": "nonretryable",
                        "type": "SerializationError",
                        "msg": f"result cannot be serialized to JSON: {exc}",
                        "tb": "",
                    },
                )
        except Exception as exc:
            kind, delay = "error", 0
            if isinstance(exc, NonRetryableError):
                kind = "nonretryable"
            elif isinstance(exc, RetryLater):
                kind, delay = "retrylater", exc.delay_ms
            _write(
                out,
                {
                    "t": "error",
                    "kind": kind,
                    "delay": delay,
                    "type": type(exc).__name__,
                    "msg": str(exc)[:4096],
                    "tb": traceback.format_exc()[-16384:],
                },
            )


if __name__ == "__main__":
    main()
