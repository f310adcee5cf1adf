"""Contexts a process middleware carries to a processor run in a child process.

A process middleware names a ``middleware.ChildContext`` around ``call_next``
(``middleware.carry_to_child``). The process pool asks each for its text when it sends
the job (``captured``, in the worker, in the run's context) and adds them to the job's
frame; the child checks what it read back from its pipe (untrusted: at most
``MAX_CHILD_CONTEXTS`` entries of an import path and a printable ASCII text of at most
``MAX_CHILD_CONTEXT_CHARS`` characters; anything else is ignored, and a function not
marked with ``middleware.entered_in_child`` is never called), calls each entry's
function before the processor and what it returned after it, in reverse order, also
when the processor raised (``enter`` / ``leave``). A run killed by its timeout ends
with its child: nothing is left to undo.

A context that cannot be captured or entered costs that context, never the job: the
processor runs without it. A function whose module the child cannot import
(``ImportError``: an optional package missing there) is skipped silently; any other
failure is logged, at most once a minute per function.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from .limits import Hush, get_logger
from .middleware import (
    ENTERED_IN_CHILD,
    MAX_CHILD_CONTEXT_CHARS,
    MAX_CHILD_CONTEXTS,
    ChildContext,
)
from .outcomes import safe_name

__all__ = ["captured", "enter", "leave"]

log = get_logger(__name__)

#: ``module:function`` (dotted names of identifiers).
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*")
_MAX_PATH_CHARS = 200
_WARN_EVERY_S = 60.0
_hushed: dict[str, Hush] = {}
#: The functions resolved in this child, by path.
_functions: dict[str, Callable[[str], Any]] = {}


def _fits(path: Any, text: Any) -> bool:
    return (
        type(path) is str
        and type(text) is str
        and len(path) <= _MAX_PATH_CHARS
        and len(text) <= MAX_CHILD_CONTEXT_CHARS
        and text.isascii()
        and text.isprintable()
        and _PATH.fullmatch(path) is not None
    )


def _failed(path: str, what: str, exc: BaseException) -> None:
    hush = _hushed.setdefault(path, Hush())
    unsaid = hush.say(_WARN_EVERY_S)
    if unsaid is not None:
        log.warning(
            "the context %s carried to a child process could not be %s (%s; %d more "
            "since the last warning): the processor runs without it",
            path,
            what,
            safe_name(exc),
            unsaid,
        )


def captured(carried: Sequence[ChildContext]) -> list[list[str]]:
    """In the worker: ``[enter path, text]`` of each context ``carried`` gives a text
    for (``ChildContext.capture``), those that do not fit left out."""
    out: list[list[str]] = []
    for context in carried[:MAX_CHILD_CONTEXTS]:
        path = getattr(context, "enter", None)
        try:
            text = context.capture()
        except Exception as exc:
            _failed(str(path)[:_MAX_PATH_CHARS], "captured", exc)
            continue
        if isinstance(path, str) and text is not None and _fits(path, text):
            out.append([path, text])
    return out


def enter(carried: Any) -> list[Callable[[], Any]]:
    """In the child: enter each well-formed context of ``carried`` (the frame's ``ctx``,
    read back from the worker's pipe); returns what to call after the processor."""
    leaving: list[Callable[[], Any]] = []
    if type(carried) is not list:
        return leaving
    for entry in carried[:MAX_CHILD_CONTEXTS]:
        if type(entry) is not list or len(entry) != 2 or not _fits(*entry):
            continue
        path, text = entry
        try:
            fn = _functions.get(path)
            if fn is None:
                module, _, qualname = path.partition(":")
                obj: Any = importlib.import_module(module)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
                if getattr(obj, ENTERED_IN_CHILD, False) is not True:
                    raise TypeError(f"{path} is not marked with middleware.entered_in_child")
                fn = _functions[path] = obj
            undo = fn(text)
        except ImportError:
            continue  # what the context needs is not installed here: nothing to enter
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            _failed(path, "entered", exc)
            continue
        if callable(undo):
            leaving.append(undo)
    return leaving


def leave(leaving: list[Callable[[], Any]]) -> None:
    """In the child, after the processor: undo what ``enter`` entered, innermost first."""
    while leaving:
        undo = leaving.pop()
        try:
            undo()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            _failed(getattr(undo, "__qualname__", type(undo).__name__), "left", exc)
