"""Redaction of named fields of job payloads: ``PathRedactor``.

A path names fields inside a payload (job data, a result, progress) by their keys,
separated by dots: ``"user.email"``, ``"card.number"``. Two wildcards:

* ``*`` stands for any one key of an object or any item of a list
  (``"items.*.card"``: the ``card`` of every item);
* ``**`` stands for any number of levels, none included (``"**.password"``: every
  ``password`` field at any depth, the top level too).

A matched field keeps its key and has its value replaced by ``"***"`` (whatever it
held: a string, a number, a whole object). Lists are walked through ``*`` and ``**``
only: a plain name never matches a list index. Keys that contain a dot or a bracket
cannot be named (use ``*``): a path with a bracket (``"items[0]"``) or a ``*`` inside a
name (``"card*"``) is refused, since it would silently match nothing. A redactor returns
a copy and never changes the value it was given.

It fails closed on values nested deeper than any payload can be (the codec refuses
more than 254 levels; only damaged or foreign data is deeper): below
``MAX_DEPTH`` levels, where a path could still match, the whole rest is masked, instead
of the walk running out of stack.

A job's ``subject_id`` option names whose personal data it carries: ``hide_subject_ids``
installs a payload view that shows it as ``"***"`` wherever the queue's redactors mask
that job's payload (``QueueContext.redactors``, applied when ``redacting`` or with
``redact_everywhere``), so a view that masks the data does not name its subject.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError
from ...options import check_text
from ...redact import REDACTED

if TYPE_CHECKING:
    from ...context import QueueContext
    from ...job import JobInfo

__all__ = [
    "MAX_DEPTH",
    "MAX_PATHS",
    "SUBJECT_OPTION",
    "PathRedactor",
    "SubjectView",
    "check_paths",
    "hide_subject_ids",
]

#: The job option naming whose personal data a job carries (``erase_subject``).
SUBJECT_OPTION = "subject_id"

#: Most paths one redactor takes.
MAX_PATHS = 200
#: Levels walked; deeper, a value a path may still reach is masked whole.
MAX_DEPTH = 256
_MAX_SEGMENTS = 32

Pattern = tuple[str, ...]


def check_paths(paths: Iterable[str], what: str = "redact_fields") -> tuple[str, ...]:
    """The paths, checked: text of at most 500 characters without control characters,
    no empty segment (``"a..b"``), at most 32 segments, at most 200 paths."""
    if isinstance(paths, str):
        raise ConfigurationError(f"{what} must be a list of paths, not one string: [{paths!r:.60}]")
    if isinstance(paths, (bytes, bytearray, Mapping)) or not isinstance(paths, Iterable):
        raise ConfigurationError(
            f"{what} must be a list of paths such as ['user.email'], got {type(paths).__name__}"
        )
    out: list[str] = []
    for p in paths:
        if len(out) >= MAX_PATHS:
            raise ConfigurationError(f"{what} lists more than {MAX_PATHS} paths")
        text = check_text(p, f"{what} path", max_len=500)
        parts = text.split(".")
        if any(not s for s in parts):
            raise ConfigurationError(
                f"{what} path {text!r:.80} has an empty segment: write keys separated by "
                "single dots, e.g. 'user.email'"
            )
        if "[" in text or "]" in text:
            raise ConfigurationError(
                f"{what} path {text!r:.80} has brackets, which a path never matches: list "
                "items are named by '*' ('items.*.card'), and a key holding a bracket "
                "by '*' too"
            )
        if any("*" in s and s not in ("*", "**") for s in parts):
            raise ConfigurationError(
                f"{what} path {text!r:.80} has '*' inside a name, which would match only "
                "that exact name: '*' and '**' stand alone between dots ('user.*', "
                "'**.password')"
            )
        if len(parts) > _MAX_SEGMENTS:
            raise ConfigurationError(f"{what} path {text!r:.80} has more than 32 segments")
        out.append(text)
    return tuple(dict.fromkeys(out))


class PathRedactor:
    """Masks the fields the ``paths`` name (see the module docstring).

    Example::

        r = PathRedactor(["user.email", "**.password"])
        r({"user": {"email": "a@b.c", "id": 7}, "login": {"password": "x"}})
        # {"user": {"email": "***", "id": 7}, "login": {"password": "***"}}
    """

    def __init__(self, paths: Iterable[str], *, mask: str = REDACTED) -> None:
        self.paths = check_paths(paths)
        self.mask = mask
        self._patterns: tuple[Pattern, ...] = tuple(tuple(p.split(".")) for p in self.paths)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def __call__(self, value: Any) -> Any:
        """A copy of ``value`` with the named fields masked."""
        if not self._patterns or not isinstance(value, (dict, list)):
            return value
        return self._walk(value, self._patterns, 0)

    def _walk(self, value: Any, patterns: tuple[Pattern, ...], depth: int) -> Any:
        # One frame per level (no helper, no comprehension): MAX_DEPTH levels stay well
        # within the interpreter's recursion limit.
        if depth >= MAX_DEPTH:
            return self.mask
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                matched, rest = _advance(patterns, key if isinstance(key, str) else None)
                if matched:
                    out[key] = self.mask
                elif rest and isinstance(item, (dict, list)):
                    out[key] = self._walk(item, rest, depth + 1)
                else:
                    out[key] = item
            return out
        matched, below = _advance(patterns, None)
        items: list[Any] = []
        for item in value:
            if matched:
                items.append(self.mask)
            elif below and isinstance(item, (dict, list)):
                items.append(self._walk(item, below, depth + 1))
            else:
                items.append(item)
        return items


def _advance(patterns: tuple[Pattern, ...], key: str | None) -> tuple[bool, tuple[Pattern, ...]]:
    """Step every pattern through one key (``None``: a list index). Returns whether a
    pattern ends here (the field is masked) and the patterns that go on below it."""
    matched = False
    rest: list[Pattern] = []
    stack = list(patterns)
    while stack:
        pat = stack.pop()
        head = pat[0]
        if head == "**":
            # Zero levels: the rest of the pattern applies to this very key.
            if len(pat) > 1:
                stack.append(pat[1:])
            else:
                matched = True
            # One more level: the same pattern applies below.
            rest.append(pat)
            continue
        if head == "*" or (key is not None and head == key):
            if len(pat) == 1:
                matched = True
            else:
                rest.append(pat[1:])
    return matched, tuple(dict.fromkeys(rest))


class SubjectView:
    """A payload view (``QueueContext.info_views``) that masks a job's ``subject_id``
    option where the queue's redactors mask its payload: the same decision as the
    queries' (``ctx.redactors`` and ``redacting`` or ``redact_everywhere``)."""

    __slots__ = ("ctx",)

    def __init__(self, ctx: QueueContext) -> None:
        self.ctx = ctx

    def __call__(self, info: JobInfo, redacting: bool) -> None:
        ctx = self.ctx
        opts = info.options
        if not (ctx.redactors and (redacting or ctx.redact_everywhere)):
            return
        if isinstance(opts, dict) and opts.get(SUBJECT_OPTION) is not None:
            info.options = {**opts, SUBJECT_OPTION: REDACTED}


def hide_subject_ids(ctx: QueueContext) -> None:
    """Install ``SubjectView`` on the queue of ``ctx`` (once: again is a no-op)."""
    if not any(isinstance(v, SubjectView) for v in ctx.info_views):
        ctx.info_views.append(SubjectView(ctx))
