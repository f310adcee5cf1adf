"""The Lua of multi-tenancy: slot fragments and the feature's own scripts.

The fragments (``accept.lua``, ``enqueue.lua``, ``admission.lua``, ``release.lua``) share
``prelude.lua``, into which the queue's declarations (fair dispatch on or off, the
quantum, quotas enforced or not) are compiled, so every process that enables tenancy the
same way runs the same code. The scripts ``tn_put.lua`` (a tenant's quota copied into a
queue, its lane refilled when the new quota leaves room: it reads the queue's
declarations from the queue's ``tenancy`` hash, ``put_script``), ``tn_recount.lua``
(one bounded step of the recount of a damaged count),
``tn_usage.lua`` (a tenant's counts in a queue, read atomically) and ``tn_registry.lua``
(the registry's compare-and-set) take their keys in ``KEYS``; ``run_script`` and
``run_scripts`` run them. See ``docs/tenancy.md``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from ...scripts import Script, ScriptRegistry
from ..audit.conn import LuaScript

__all__ = [
    "ADMISSION_FIELDS",
    "FEATURE",
    "MAX_TENANT_ID",
    "MAX_TICKETS",
    "fragments",
    "heal_script",
    "put_script",
    "run_script",
    "run_scripts",
    "source",
]

#: The name the fragments and the option are registered under.
FEATURE = "multi-tenancy"
#: Longest tenant id, in characters (ids end up in key names and messages).
MAX_TENANT_ID = 128
#: Most dispatch tickets one tenant holds in a queue (weight x quantum is clamped to it).
MAX_TICKETS = 10_000
#: Job-hash fields claim reads for the admission check: the job's tenant, whether it is
#: counted in the tenant's unfinished jobs.
ADMISSION_FIELDS = ("tn", "tq")
_SLOTS = ("accept", "enqueue", "admission", "release")


@cache
def source(name: str) -> str:
    """The text of one of the package's Lua files."""
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")


def _prelude(quantum: int | str, fair: str, quotas: str, refill: str) -> str:
    return (
        source("prelude")
        .replace("@QUANTUM@", str(quantum))
        .replace("@FAIR@", fair)
        .replace("@QUOTAS@", quotas)
        # Lua's # counts bytes: up to 4 per character.
        .replace("@MAX_TENANT_ID@", str(MAX_TENANT_ID * 4))
        .replace("@MAX_TICKETS@", str(MAX_TICKETS))
        .replace("@REFILL_MIN@", refill)
    )


def _compiled_prelude(quantum: int, fair: bool, quotas: bool) -> str:
    return _prelude(
        int(quantum),
        "true" if fair else "false",
        "true" if quotas else "false",
        str(max(1, int(quantum) // 4)),
    )


def fragments(quantum: int, fair: bool, quotas: bool = True) -> dict[str, str]:
    """The source of each slot fragment for these declarations."""
    prelude = _compiled_prelude(quantum, fair, quotas)
    return {slot: source(slot).replace("@PRELUDE@", prelude) for slot in _SLOTS}


def heal_script(quantum: int, fair: bool, quotas: bool = True) -> str:
    """The source of ``tn_heal.lua`` for these declarations (run through the queue's
    script registry as ``tn_heal``: it uses the prelude and the parking library)."""
    return source("tn_heal").replace("@PRELUDE@", _compiled_prelude(quantum, fair, quotas))


@cache
def put_script() -> Script:
    """``tn_put.lua``, its includes expanded. It serves every queue, whatever its
    declarations: the prelude reads them from the queue's ``tenancy`` hash (written by
    each process of the queue at its sync, ``install.py``), as the script runs."""
    text = source("tn_put").replace(
        "@PRELUDE@", _prelude("DECL_QUANTUM", "DECL_FAIR", "DECL_QUOTAS", "DECL_REFILL")
    )
    registry = ScriptRegistry()
    registry.add_fragment("tn_put", text)
    return registry.get("tn_put")


async def run_script(
    client: Any, script: LuaScript | Script, keys: list[str], args: list[Any]
) -> Any:
    """Run one of the package's scripts on ``client`` by SHA; the source again when the
    server does not know it (restart, failover). Its keys are given in ``KEYS``."""
    try:
        return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.execute_command("EVAL", script.source, len(keys), *keys, *args)


async def run_scripts(
    client: Any, script: LuaScript, calls: list[tuple[list[str], list[Any]]]
) -> list[Any]:
    """Run ``script`` once per ``(keys, args)`` of ``calls`` in one pipeline (one round
    trip; not a transaction: each call is atomic on its own), as ``run_script`` would
    one by one; the replies in order. Calls refused because the server does not know
    the script are sent again by source, in a second pipeline. The first error raised."""
    replies: list[Any] = []
    again = list(range(len(calls)))
    for cmd in ("EVALSHA", "EVAL"):
        if not again:
            break
        body = script.sha if cmd == "EVALSHA" else script.source
        pipe = client.pipeline(transaction=False)
        for i in again:
            keys, args = calls[i]
            pipe.execute_command(cmd, body, len(keys), *keys, *args)
        got = await pipe.execute(raise_on_error=False)
        if not replies:
            replies = got
        else:
            for i, r in zip(again, got, strict=True):
                replies[i] = r
        again = [i for i in again if isinstance(replies[i], NoScriptError)]
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return replies
