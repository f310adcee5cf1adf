"""Sealed progress values and log lines: what a processor of an encrypted job writes
with ``job.update_progress(...)`` and ``job.log(...)`` is sealed like its data (see
``docs/encryption.md``, "Progress and log lines").

* Writing: ``ProgressLogSeal`` is a job-text filter (``kitium_queue.jobtexts``,
  ``queue.job_texts.filters``) installed by ``EncryptionManager`` unless
  ``seal_progress_and_logs=False``. For an encrypted job (option ``encrypted``, or
  ``encrypt_all``) it seals the value under the queue's current key (the key failure
  texts use: ``failures.seal_key``), bound to the queue, the job's id and name and the
  field (``progress`` or ``log``, never ``data``, ``result``, ``error`` or
  ``traceback``), and stores ``(sealed: key <id>) <envelope JSON>``: a log line as it
  is, a progress value as that text in a JSON string (``pg`` stays JSON, and the
  ``job-progress`` event copies it). With no key to seal with, the value is withheld.
* Reading: ``view_progress`` (called by the manager's ``JobInfo`` view) and
  ``LogLinesView`` (a log view, ``queue.job_texts.log_views``) open them in a process
  holding the key and show ``(sealed: key <id>)`` where they cannot.
* Rotation: ``rotation.JobTarget`` re-seals ``pg`` and the log lines under the new key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from .crypto import Binding
from .failures import (
    FailureCopyView,
    FailureSeal,
    is_sealed_text,
    open_text,
    parse_sealed,
    seal_key,
    sealed_text,
    view_failures,
)

if TYPE_CHECKING:
    from ...job import JobInfo
    from .manager import EncryptionManager

__all__ = [
    "LogLinesView",
    "ProgressLogSeal",
    "install_texts",
    "pack_lines",
    "text_binding",
    "unpack_lines",
    "view_progress",
    "view_texts",
]

#: Stored in place of a value when this process has no key to seal it with.
WITHHELD = (
    "(sealed: {kind} withheld: the worker held no key to seal it with; "
    "EncryptionManager seal_progress_and_logs)"
)


def install_texts(manager: EncryptionManager) -> None:
    """Install the manager's filters of the texts a run writes (its failure texts unless
    ``seal_failures=False``, its progress and log lines unless
    ``seal_progress_and_logs=False``), its log view and its view of the copies other
    features keep of failure texts (always: what was sealed before still opens)."""
    q = manager.queue
    if manager.seal_failures:
        q.failure_text_filters.append(FailureSeal(manager))
    if manager.seal_progress_and_logs:
        q.job_texts.filters.append(ProgressLogSeal(manager))
    q.job_texts.log_views.append(LogLinesView(manager))
    q.job_texts.copy_views.append(FailureCopyView(manager))


def view_texts(manager: EncryptionManager, info: JobInfo) -> None:
    """Open the sealed texts of an encrypted job's ``info`` in place: its failure texts
    and its progress."""
    view_failures(manager, info)
    view_progress(manager, info)


def text_binding(queue: str, job_id: str, name: str, kind: str) -> Binding:
    """The binding of a job's progress value (``kind="progress"``) or log line
    (``"log"``)."""
    return Binding("job", queue, job_id, name, kind)


class ProgressLogSeal:
    """The job-text filter of one ``EncryptionManager`` (see the module docstring)."""

    def __init__(self, manager: EncryptionManager) -> None:
        self.manager = manager

    def rewrites(self, job: Any, kind: str) -> bool:
        """Whether the values ``job`` writes (``kind``) are sealed: an encrypted job's
        (the webhooks feature asks this before sending a progress value)."""
        m = self.manager
        return m.encrypt_all or job.options.get("encrypted") is True

    def __call__(self, job: Any, kind: str, raw: bytes) -> bytes:
        m = self.manager
        if not self.rewrites(job, kind):
            return raw
        key_id = seal_key(m, job)
        if key_id is None:
            text = WITHHELD.format(kind="progress" if kind == "progress" else "log line")
            return orjson.dumps(text) if kind == "progress" else text.encode()
        binding = text_binding(m.queue.name, job.id, job.name, kind)
        sealed = sealed_text(m.ring.seal(raw, key_id, binding))
        return orjson.dumps(sealed.decode()) if kind == "progress" else sealed


def view_progress(manager: EncryptionManager, info: JobInfo) -> None:
    """Open the sealed progress value of an encrypted job's ``info`` in place; where it
    does not open, show ``(sealed: key <id>)`` (with why, when the key is held here)."""
    value = info.progress
    if not isinstance(value, str) or not is_sealed_text(value):
        return
    binding = text_binding(manager.queue.name, info.id, info.name, "progress")
    plain = open_text(manager, value, binding)
    if isinstance(plain, str):
        info.progress = plain
        return
    try:
        info.progress = orjson.loads(plain)
    except orjson.JSONDecodeError:
        info.progress = "(sealed: malformed)"


class LogLinesView:
    """The log view of one ``EncryptionManager``: opens sealed lines in place. A line
    that only starts like one (a plain job's own text, or one damaged past parsing) is
    left as it is: it holds no envelope to open or to hide."""

    def __init__(self, manager: EncryptionManager) -> None:
        self.manager = manager

    def __call__(self, job_id: str, name: str | None, lines: list[str], redact: bool) -> None:
        q = self.manager.queue.name
        for i, line in enumerate(lines):
            if not is_sealed_text(line) or parse_sealed(line) is None:
                continue
            if name is None:  # the job's record is gone: nothing to bind the line to
                lines[i] = "(sealed: its job's record is gone)"
                continue
            plain = open_text(self.manager, line, text_binding(q, job_id, name, "log"))
            lines[i] = plain if isinstance(plain, str) else plain.decode("utf-8", "replace")


def pack_lines(lines: list[bytes]) -> bytes:
    """A log list as one string, each line ``<length>:<bytes>`` (``enc_swap.lua``
    compares and rebuilds a list in this form)."""
    return b"".join(b"%d:%b" % (len(line), line) for line in lines)


def unpack_lines(packed: bytes) -> list[bytes]:
    """The lines ``pack_lines`` packed."""
    out: list[bytes] = []
    at = 0
    while at < len(packed):
        colon = packed.index(b":", at)
        size = int(packed[at:colon])
        out.append(packed[colon + 1 : colon + 1 + size])
        at = colon + 1 + size
    return out
