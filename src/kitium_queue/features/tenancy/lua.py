"""The Lua of multi-tenancy: slot fragments and the feature's own scripts.

The fragments (``accept.lua``, ``enqueue.lua``, ``admission.lua``, ``release.lua``; with
fair dispatch also ``watch.lua``, the first admission check of all, and
``duplicate.lua``) share ``prelude.lua``, into which the queue's declarations (fair
dispatch on or off, the quantum, quotas enforced or not) are compiled, so every process
that enables tenancy the same way runs the same code; within one script call they share
their reading of each tenant (``SLOT_SCRATCH``). The scripts ``tn_put.lua`` (a tenant's
quota copied into a queue, its lane refilled when the new quota leaves room: it reads
the queue's declarations from the queue's ``tenancy`` hash, ``put_script``),
``tn_recount.lua`` (one bounded step of the recount of a damaged count),
``tn_usage.lua`` (a tenant's counts in a queue, read atomically), ``tn_present.lua``
(whether a registered queue is still there) and ``tn_registry.lua`` (the registry's
compare-and-set) take their keys in ``KEYS``; ``run_script`` and ``run_scripts`` run
them, the read-only ones (``tn_usage``, ``tn_present``) with ``EVALSHA_RO`` where the
server has it. See ``docs/tenancy.md``.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import NoPermissionError, NoScriptError, ResponseError

from ...connerrors import NOPERM
from ...scripts import Script, ScriptRegistry
from ...slots import ORDER_READY
from ..audit.conn import LuaScript

__all__ = [
    "ADMISSION_FIELDS",
    "DUPLICATE_ORDER",
    "FEATURE",
    "MAX_PLACES",
    "MAX_TENANT_ID",
    "MAX_TICKETS",
    "WATCH",
    "WATCH_FIELDS",
    "WATCH_ORDER",
    "add_fragments",
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
#: A tenant's room without fair dispatch when no cap or rate bounds it (a refill then
#: moves what the parking library lets one call move).
MAX_TICKETS = 10_000
#: Most dispatch tickets one tenant holds in a queue (fair dispatch: weight x quantum is
#: clamped to it), so most of its jobs in ``wait`` at once: half of what a worker's claim
#: examines at least (1,000 candidates, ``worker.py``), so that no tenant's holders fill
#: the claim's scan, not even ones another feature holds back in ``wait``, and every
#: other tenant with work keeps a job inside it. Shares go by weight while
#: ``weight x quantum`` is at most this; see ``docs/tenancy.md``.
MAX_PLACES = 500
#: Job-hash fields claim reads for the admission check: the job's tenant, whether it is
#: counted in the tenant's unfinished jobs.
ADMISSION_FIELDS = ("tn", "tq")
#: The name of the watch fragment (fair dispatch): an admission check that lets every job
#: pass and tells the tenancy check which candidates hold a dispatch ticket, so that a
#: holder another feature's check parks gives it back at once (``admission.lua``).
WATCH = f"{FEATURE}:tickets"
#: The job-hash fields the watch reads: the job's tenant.
WATCH_FIELDS = ("tn",)
#: Its place among the admission checks: before every other feature's (``slots``), so
#: that it sees the candidates they park before the tenancy check is asked.
WATCH_ORDER = ORDER_READY - 10
#: The place of the ``duplicate`` fragment (fair dispatch): after the fragments that act
#: on the job an idempotency key points to (order 0: a debounce moving it to delayed).
DUPLICATE_ORDER = 10
_SLOTS = ("accept", "enqueue", "admission", "release")
_FAIR_SLOTS = ("watch", "duplicate")
# What the prelude's table of tenants is: in slot fragments one table per script call
# shared by all of them (SLOT_SCRATCH, lua/lib_slots.lua); a script's own elsewhere.
_SHARED_STATES = (
    "(function() local c = SLOT_SCRATCH['multi-tenancy:tenants'] if c == nil then c = {} "
    "SLOT_SCRATCH['multi-tenancy:tenants'] = c end return c end)()"
)


@cache
def source(name: str) -> str:
    """The text of one of the package's Lua files."""
    return resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")


def _prelude(quantum: int | str, fair: str, quotas: str, refill: str, states: str = "{}") -> str:
    return (
        source("prelude")
        .replace("@STATES@", states)
        .replace("@QUANTUM@", str(quantum))
        .replace("@FAIR@", fair)
        .replace("@QUOTAS@", quotas)
        # Lua's # counts bytes: up to 4 per character.
        .replace("@MAX_TENANT_ID@", str(MAX_TENANT_ID * 4))
        .replace("@MAX_TICKETS@", str(MAX_TICKETS))
        .replace("@MAX_PLACES@", str(MAX_PLACES))
        .replace("@REFILL_MIN@", refill)
    )


def _compiled_prelude(quantum: int, fair: bool, quotas: bool, states: str = "{}") -> str:
    return _prelude(
        int(quantum),
        "true" if fair else "false",
        "true" if quotas else "false",
        str(max(1, int(quantum) // 4)),
        states,
    )


def fragments(quantum: int, fair: bool, quotas: bool = True) -> dict[str, str]:
    """The source of each fragment for these declarations, by file: one per slot
    (``accept``, ``enqueue``, ``admission``, ``release``) and, with fair dispatch,
    ``watch`` (an admission check, ``WATCH``) and ``duplicate`` (the duplicate slot)."""
    prelude = _compiled_prelude(quantum, fair, quotas, _SHARED_STATES)
    names = _SLOTS + _FAIR_SLOTS if fair else _SLOTS
    return {name: source(name).replace("@PRELUDE@", prelude) for name in names}


def add_fragments(scripts: ScriptRegistry, quantum: int, fair: bool, quotas: bool) -> None:
    """Fill the queue's slots (``scripts``) with the fragments for these declarations."""
    frags = fragments(quantum, fair, quotas)
    scripts.add_slot("accept", FEATURE, frags["accept"])
    scripts.add_slot("enqueue", FEATURE, frags["enqueue"])
    scripts.add_slot("admission", FEATURE, frags["admission"], fields=ADMISSION_FIELDS)
    scripts.add_slot("release", FEATURE, frags["release"])
    if fair:
        # Dispatch tickets are held in wait only: a holder another feature's admission
        # check parks, or a debounce moves to delayed, gives its ticket back at once.
        scripts.add_slot("admission", WATCH, frags["watch"], fields=WATCH_FIELDS, order=WATCH_ORDER)
        scripts.add_slot("duplicate", FEATURE, frags["duplicate"], order=DUPLICATE_ORDER)


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


#: The read-only variants of the script commands (Redis 7.0+): a Redis user that may only
#: read a script's keys (``%R~`` key patterns) may run a script through them, never
#: through ``EVALSHA``/``EVAL``, which Redis checks as writing every key they are given.
_READ_ONLY = {"EVALSHA": "EVALSHA_RO", "EVAL": "EVAL_RO"}
#: A read-only variant refused because the server does not know it (before Redis 7.0,
#: ``memory://``) or the user was not granted it (rules written before it was listed).
_RO_REFUSED = re.compile(
    r"(unknown command|permissions to run the) [`']?(evalsha_ro|eval_ro)\b", re.IGNORECASE
)
# Clients on which the read-only variants were refused: the plain commands from then on.
_NO_READ_ONLY: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _ro_refused(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and _RO_REFUSED.search(str(reply)) is not None


def _denied(reply: Any) -> bool:
    """Whether ``reply`` is a refusal for lack of permission (ACL)."""
    return isinstance(reply, NoPermissionError) or (
        isinstance(reply, ResponseError) and NOPERM.search(str(reply)) is not None
    )


def _commands(client: Any, readonly: bool) -> tuple[str, str]:
    """The commands that run a script by SHA and by source on ``client``."""
    if readonly and client not in _NO_READ_ONLY:
        return _READ_ONLY["EVALSHA"], _READ_ONLY["EVAL"]
    return "EVALSHA", "EVAL"


def _fall_back(client: Any, refused: ResponseError, plain: list[Any]) -> None:
    """After the read-only commands were ``refused`` and the plain ones answered
    ``plain`` (one reply or error per call): the plain ones for ``client`` from then on;
    unless the user was refused both for lack of permission (every call), and so not
    granted the read-only ones, which it needs (a user that may only read the keys
    may run nothing else on them): then ``refused`` is raised, naming them, and they
    are tried again at the next call (granted meanwhile)."""
    if _denied(refused) and all(_denied(r) for r in plain):
        raise refused
    with contextlib.suppress(TypeError):  # a client that takes no weak reference
        _NO_READ_ONLY[client] = True


async def _one(
    client: Any, script: LuaScript | Script, keys: list[str], args: list[Any], by_sha: str
) -> Any:
    by_source = "EVAL_RO" if by_sha == "EVALSHA_RO" else "EVAL"
    try:
        return await client.execute_command(by_sha, script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.execute_command(by_source, script.source, len(keys), *keys, *args)


async def run_script(
    client: Any,
    script: LuaScript | Script,
    keys: list[str],
    args: list[Any],
    *,
    readonly: bool = False,
) -> Any:
    """Run one of the package's scripts on ``client`` by SHA; the source again when the
    server does not know it (restart, failover). Its keys are given in ``KEYS``.

    ``readonly``: the script only reads (``tn_usage``, ``tn_present``): it is run with
    ``EVALSHA_RO``/``EVAL_RO``, so that a Redis user that may only read its keys may
    run it (such a user is refused ``EVALSHA`` on them). A server that does not know
    those commands (before Redis 7.0) or a user not granted them runs it as any other
    script, with ``EVALSHA``/``EVAL`` (remembered for ``client``); a user refused
    those too gets the refusal of the read-only ones (``_fall_back``)."""
    by_sha, _ = _commands(client, readonly)
    try:
        return await _one(client, script, keys, args, by_sha)
    except ResponseError as exc:
        if by_sha == "EVALSHA" or not _ro_refused(exc):
            raise
        refused = exc
    try:
        out = await _one(client, script, keys, args, "EVALSHA")
    except ResponseError as exc:
        _fall_back(client, refused, [exc])
        raise
    _fall_back(client, refused, [out])
    return out


async def _pipelined(
    client: Any, script: LuaScript, calls: list[tuple[list[str], list[Any]]], by_sha: str
) -> list[Any]:
    """The replies (or errors) of ``calls``, by SHA in one pipeline, those the server
    did not know the script for again by source in a second."""
    replies: list[Any] = []
    again = list(range(len(calls)))
    for cmd in (by_sha, "EVAL_RO" if by_sha == "EVALSHA_RO" else "EVAL"):
        if not again:
            break
        body = script.sha if cmd == by_sha else script.source
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
    return replies


async def run_scripts(
    client: Any,
    script: LuaScript,
    calls: list[tuple[list[str], list[Any]]],
    *,
    readonly: bool = False,
) -> list[Any]:
    """Run ``script`` once per ``(keys, args)`` of ``calls`` in one pipeline (one round
    trip; not a transaction: each call is atomic on its own), as ``run_script`` would
    one by one (``readonly`` too); the replies in order. Calls refused because the
    server does not know the script are sent again by source, in a second pipeline;
    calls whose read-only command was refused, again with ``EVALSHA``. The first error
    raised."""
    by_sha, _ = _commands(client, readonly)
    replies = await _pipelined(client, script, calls, by_sha)
    refused = next((r for r in replies if _ro_refused(r)), None) if by_sha != "EVALSHA" else None
    if refused is not None:
        replies = await _pipelined(client, script, calls, "EVALSHA")
        _fall_back(client, refused, replies)
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return replies
