"""The Lua of workflows and job dependencies: slot fragments and the feature's scripts.

The fragments (``accept.lua``, ``enqueue.lua``, ``admission.lua``, ``release.lua``,
``requeue.lua``) and
scripts (``wf_create.lua``, ``wf_cancel.lua``, ``wf_depend.lua``, ``wf_heal.lua``) share
``prelude.lua``, into which the manager's settings are compiled, so every process that
enables the feature with the same settings runs the same code. See ``docs/workflows.md``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from ...limits import MAX_FOLLOWS, MAX_RUN_CONTEXT_CHARS
from ...middleware import MAX_FILTERED_REASON_BYTES, SEALED_TEXT_MARK

__all__ = [
    "ADMISSION_FIELDS",
    "FEATURE",
    "MAX_EDGES",
    "MAX_KIDS",
    "MAX_PARENTS",
    "MAX_STEPS",
    "RELEASE_ORDER",
    "SCRIPTS",
    "SLOTS",
    "fragments",
    "script",
]

#: The name the fragments, options and scripts are registered under.
FEATURE = "workflows"
#: Job-hash field claim reads for the admission check: the job had unfinished parents.
ADMISSION_FIELDS = ("wd",)
#: The feature's own scripts (run through the queue's script registry).
SCRIPTS = ("wf_create", "wf_cancel", "wf_depend", "wf_heal")
#: The slots the feature fills.
SLOTS = ("accept", "enqueue", "admission", "release", "requeue")
#: ``order`` of the release fragment: after every other feature's (install.py).
RELEASE_ORDER = 20
#: Most parents one job may have, and most dependents of one job.
MAX_PARENTS = 10_000
MAX_KIDS = 10_000
#: Most steps one workflow may have (written at once, or added to it while it runs).
MAX_STEPS = 20_000
#: Most parent-dependent pairs of a workflow written at once: ``wf_create.lua`` writes
#: each pair (about 5 us of Redis time each), in one script call.
MAX_EDGES = 100_000


@cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")


def _prelude(retain_ms: int) -> str:
    return (
        _read("prelude")
        .replace("@RETAIN@", str(int(retain_ms)))
        .replace("@MAX_PARENTS@", str(MAX_PARENTS))
        .replace("@MAX_KIDS@", str(MAX_KIDS))
        .replace("@MAX_STEPS@", str(MAX_STEPS))
        .replace("@MAX_LINKS@", str(MAX_FOLLOWS))
        .replace("@MAX_CONTEXT@", str(MAX_RUN_CONTEXT_CHARS))
        .replace("@SEALED_MARK@", SEALED_TEXT_MARK)
        .replace("@SEALED_MAX@", str(MAX_FILTERED_REASON_BYTES))
    )


def fragments(retain_ms: int) -> dict[str, str]:
    """The source of each slot fragment for this retention."""
    prelude = _prelude(retain_ms)
    return {slot: _read(slot).replace("@PRELUDE@", prelude) for slot in SLOTS}


def script(name: str, retain_ms: int) -> str:
    """The source of one of the feature's scripts (``SCRIPTS``)."""
    if name not in SCRIPTS:
        raise KeyError(name)
    return _read(name).replace("@PRELUDE@", _prelude(retain_ms))
