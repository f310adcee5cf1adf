"""Sealed failure texts: the reason (``e``, and ``le`` once it is history) and the
traceback (``tb``) a failed run of an encrypted job stores are sealed like its data
(see ``docs/encryption.md``, "What is encrypted, and what is not").

* Writing: ``FailureSeal`` is a failure-text filter (``middleware.FailureTextFilter``,
  ``queue.failure_text_filters``) installed by ``EncryptionManager`` unless
  ``seal_failures=False``. For a job that is encrypted (option ``encrypted``, or
  ``encrypt_all``) it seals each non-empty text under the queue's current key, bound to
  the queue, the job's id and name and the field (``error`` or ``traceback``, never
  ``data`` or ``result``), and stores ``(sealed: key <id>) <envelope JSON>``: a reader
  without the manager, and the event stream (which copies the first 512 bytes of a
  reason), see the placeholder first, never the text. The worker's own refusals of an
  encrypted job (``running.py``: tampered data, a key nobody holds, a plaintext job under
  ``encrypt_all``) quote no payload and stay readable, so that they can be acted on
  without the key. With no key to seal with (this process does not hold the current
  key nor the job's), the texts are withheld rather than stored in clear.
* Reading: ``view_failures`` (called by the manager's ``JobInfo`` view) opens them in a
  process holding the key, and shows ``(sealed: key <id>)`` where it cannot; so does
  ``FailureCopyView`` (a copy view, ``kitium_queue.jobtexts``) for the copies other
  features keep of them (the workflows feature: a failed step's reason in ``dep:<id>``).
* Rotation: ``rotation.JobTarget`` re-seals them under the new key (``is_sealed_text``,
  ``parse_sealed``, ``sealed_text``), and ``copies.CopyTarget`` their declared copies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ...errors import ConfigurationError
from ...middleware import SEALED_TEXT_MARK
from .crypto import Binding, DecryptionError, KeyNotHeldError, envelope_key_id, is_envelope

if TYPE_CHECKING:
    from ...job import JobInfo
    from .manager import EncryptionManager

__all__ = [
    "FailureCopyView",
    "FailureSeal",
    "check_seal",
    "failure_binding",
    "is_sealed_text",
    "mark_own",
    "open_text",
    "parse_sealed",
    "seal_key",
    "sealed_text",
    "view_failures",
]

E = TypeVar("E", bound=BaseException)

#: How every sealed failure text starts (the core's mark of a text never to be cut, then its key).
SEALED_PREFIX = SEALED_TEXT_MARK.encode() + b"key "
#: The attribute marking an error the worker's encryption guard raised itself.
_OWN = "_kq_encryption_own_text"
#: Stored in place of the texts when this process has no key to seal them with.
WITHHELD = (
    b"(sealed: failure text withheld: the worker held no key to seal it with; "
    b"EncryptionManager seal_failures)"
)
#: The fields of a ``JobInfo`` holding failure texts, and the part each is bound to.
_FIELDS = (("failed_reason", "error"), ("last_error", "error"), ("stacktrace", "traceback"))


def failure_binding(queue: str, job_id: str, name: str, part: str) -> Binding:
    """The binding of a job's failure text: ``part`` is ``error`` (the reason, ``e``,
    and ``le``, the same text kept once it is history) or ``traceback`` (``tb``)."""
    return Binding("job", queue, job_id, name, part)


def check_seal(value: Any, what: str = "failures") -> bool:
    """``EncryptionManager``'s ``seal_failures`` (or ``seal_<what>``), checked."""
    if not isinstance(value, bool):
        texts = (
            "the failure reason and traceback"
            if what == "failures"
            else "the progress values and log lines"
        )
        raise ConfigurationError(
            f"seal_{what} must be True or False, got {value!r:.40}: True seals {texts} of "
            "encrypted jobs, False stores them in clear"
        )
    return value


def mark_own(exc: E) -> E:
    """``exc``, marked as raised by the worker's encryption guard: its text quotes no
    payload and is stored readable."""
    setattr(exc, _OWN, True)
    return exc


def sealed_text(envelope: dict[str, Any]) -> bytes:
    """What is stored for a sealed failure text: the placeholder, then the envelope."""
    kid = str(envelope.get("kid"))
    return SEALED_PREFIX + kid.encode() + b") " + orjson.dumps(envelope)


def is_sealed_text(raw: bytes | str | None) -> bool:
    """Whether a stored failure text looks sealed (not whether it opens)."""
    if isinstance(raw, str):
        return raw.startswith(SEALED_PREFIX.decode())
    return raw is not None and raw.startswith(SEALED_PREFIX)


def parse_sealed(raw: bytes | str) -> dict[str, Any] | None:
    """The envelope of a sealed failure text; None when it is not one."""
    text = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    if not text.startswith(SEALED_PREFIX):
        return None
    at = text.find(b") {")
    if at < 0:
        return None
    try:
        env = orjson.loads(text[at + 2 :])
    except orjson.JSONDecodeError:
        return None
    return env if is_envelope(env) else None


def placeholder(env: dict[str, Any] | None, why: str = "") -> str:
    """What a view shows of a sealed text it cannot open (never the envelope)."""
    kid = envelope_key_id(env)
    shown = kid if kid is not None and kid.isprintable() and len(kid) <= 64 else "<malformed>"
    return f"(sealed: key {shown}{why})"


class FailureSeal:
    """The failure-text filter of one ``EncryptionManager`` (see the module docstring)."""

    def __init__(self, manager: EncryptionManager) -> None:
        self.manager = manager

    def __call__(
        self, job: Any, exc: BaseException | None, reason: bytes, tb: bytes
    ) -> tuple[bytes, bytes]:
        if not self.rewrites(job, exc):
            return reason, tb
        m = self.manager
        key_id = self._key(job)
        if key_id is None:
            return (WITHHELD if reason else b""), b""
        q = m.queue.name
        out = []
        for text, part in ((reason, "error"), (tb, "traceback")):
            if text:
                binding = failure_binding(q, job.id, job.name, part)
                text = sealed_text(m.ring.seal(text, key_id, binding))
            out.append(text)
        return out[0], out[1]

    def rewrites(self, job: Any, exc: BaseException | None) -> bool:
        """Whether this filter rewrites the texts of ``job``'s failure ``exc`` (an
        encrypted job's, but the worker's own refusals): the worker's log lines ask this
        instead of sealing the texts again (``FailureTextFilter``)."""
        m = self.manager
        if not (m.encrypt_all or job.options.get("encrypted") is True):
            return False
        return exc is None or not getattr(exc, _OWN, False)

    def _key(self, job: Any) -> str | None:
        return seal_key(self.manager, job)


def seal_key(manager: EncryptionManager, job: Any) -> str | None:
    """The key a job's texts are sealed under: the queue's current key as this process
    last read it, else the job's data key (while its data is the envelope), when held
    here with the right material; else None."""
    ring = manager.ring
    for key_id in (manager._current, envelope_key_id(job.data)):
        if key_id is not None and key_id in ring and key_id not in ring.mismatched:
            return key_id
    return None


def open_text(manager: EncryptionManager, value: str, binding: Binding) -> bytes | str:
    """The plaintext of the sealed text ``value`` (bytes), or what a view shows in its
    place (str): ``(sealed: key <id>)`` where the key is not held, with why when it is
    held but the text does not open, ``(sealed: malformed)`` for a damaged one."""
    env = parse_sealed(value)
    if env is None:
        return "(sealed: malformed)"
    try:
        return manager.ring.open(env, binding)
    except KeyNotHeldError:
        return placeholder(env)
    except DecryptionError:
        return placeholder(env, "; it does not open: altered or moved")


def view_failures(manager: EncryptionManager, info: JobInfo) -> None:
    """Open the sealed failure texts of an encrypted job's ``info`` in place; where one
    does not open, show ``(sealed: key <id>)`` (with why, when the key is held here)."""
    for attr, part in _FIELDS:
        value = getattr(info, attr)
        if not isinstance(value, str) or not is_sealed_text(value):
            continue
        binding = failure_binding(manager.queue.name, info.id, info.name, part)
        plain = open_text(manager, value, binding)
        setattr(info, attr, plain if isinstance(plain, str) else plain.decode("utf-8", "replace"))


class FailureCopyView:
    """The copy view of one ``EncryptionManager`` (``jobtexts.TextCopyView``): a copy of
    a job's sealed failure text that another feature keeps is opened as the job's own
    (``open_text``), bound to the same queue, job id, job name and part. A text that is
    not a sealed one is left as it is (a clear reason, a feature's own marker, what
    another view showed already); one whose envelope does not parse (cut short, by a
    copy made before copies kept sealed texts whole, or altered) is never shown."""

    def __init__(self, manager: EncryptionManager) -> None:
        self.manager = manager

    def __call__(self, job_id: str, name: str | None, part: str, text: str) -> str:
        if part not in ("error", "traceback") or not is_sealed_text(text):
            return text
        env = parse_sealed(text)
        if env is None:
            return "(sealed: malformed or cut short)" if ") {" in text else text
        if name is None:  # nothing to bind it to: the job's name is recorded nowhere
            return placeholder(env, "; its job's record is gone")
        plain = open_text(
            self.manager, text, failure_binding(self.manager.queue.name, job_id, name, part)
        )
        return plain if isinstance(plain, str) else plain.decode("utf-8", "replace")
