"""The Redis user's command rights, checked before a worker or producer runs a script.

Redis checks an ACL user's right to each command a script calls only when the script
calls it, and it never rolls a script back: a claim refused its ``XADD`` after its
``ZPOPMIN`` has taken jobs out of wait that are then in no set (measured: a worker whose
user lacked ``xadd`` left all 100 waiting jobs in no set within 5 s, and ``health`` said
ready). So one script asks Redis, with ``redis.acl_check_cmd`` (Redis 7.0+), whether
this connection's user may run every command of the scripts about to run, on a key and
channel of the queue (its key pattern): a worker checks its scripts (``WORKER_SCRIPTS``)
when it starts, a producer the enqueue script at its first add. A refused one fails
that call with ``PermissionDeniedError`` naming them, before anything is written. A
worker that meets a refusal later (the user's rights changed while it ran) checks again,
names what is refused, and claims and records nothing until it is allowed
(``rounds.permission_refused``); the one call refused part-way may have left the jobs
it was moving in no set.

The commands are those the scripts, as composed with the slot fragments the features
added, call with ``redis.call`` or through a wrapper that raises a refusal (``_CALL``);
a refusal inside ``redis.pcall`` is a reply the script handles.
Only the scripts a role runs are checked: a user without the administrative scripts'
commands (``kitium-queue acl redis-rules`` makes such users) is not refused. Servers
before 7.0 and ``memory://`` have no such check: nothing is refused up front there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError

from .connerrors import limit_reached, permission_denied
from .errors import PermissionDeniedError

__all__ = [
    "PRODUCER_SCRIPTS",
    "WORKER_SCRIPTS",
    "check_commands",
    "refused_commands",
    "refused_error",
    "script_commands",
]

#: A command a script calls with ``redis.call`` (a refusal aborts the script), or through
#: the wrappers that raise what is not a WRONGTYPE (``park_call``, tenancy's
#: ``run_write``). ``redis.pcall`` ones are left out: a refusal there is an error reply
#: the script handles, not an abort.
_CALL = re.compile(r"(?:redis\.call\(|park_call\(\s*'\w+',|run_write\(\s*\w+,)\s*'([A-Za-z]+)'")

_PROBE = """
local refused = {}
if not redis.acl_check_cmd then return refused end
for i = 1, #ARGV do
  local ok, allowed = pcall(redis.acl_check_cmd, ARGV[i], KEYS[1])
  if ok and not allowed then refused[#refused + 1] = ARGV[i] end
end
return refused
"""


#: The scripts a worker runs (a claim, an outcome, a lease renewal): their commands are
#: checked when it starts.
WORKER_SCRIPTS = ("claim", "finish", "extend")
#: The script a producer runs: its commands are checked at its first add.
PRODUCER_SCRIPTS = ("enqueue",)


def script_commands(owner: Any, names: Iterable[str]) -> list[str]:
    """The command names the scripts ``names`` of ``owner`` (a queue or its context:
    its ``scripts`` registry composes them with the slot fragments) may call, sorted."""
    found: set[str] = set()
    for name in names:
        found.update(c.upper() for c in _CALL.findall(owner.scripts.get(name).source))
    return sorted(found)


async def refused_commands(client: Any, owner: Any, names: Iterable[str]) -> list[str]:
    """Of the commands of ``owner``'s scripts ``names``, those this connection's user
    may not run on the queue's keys and channels (none on ``memory://``)."""
    commands = script_commands(owner, names)
    if not commands or owner.connection.is_memory:
        return []
    try:
        reply = await client.eval(_PROBE, 1, owner.keys.base + "acl", *commands)
    except NoPermissionError as exc:  # the queue's keys themselves, or EVAL, refused
        raise permission_denied(str(exc)) from None
    except RedisConnectionError as exc:
        # The first call of a worker or producer may be the one that needs one more
        # connection: refused by maxclients or the open-files limit, it is said so,
        # with the queue's name (``ConnectionLimitError``), never as redis-py's error.
        said = owner.connection.error(exc, owner.name) if limit_reached(exc) else None
        if said is None:
            raise
        raise said from None
    return [c.decode() if isinstance(c, bytes) else str(c) for c in reply or ()]


async def check_commands(client: Any, owner: Any, names: Iterable[str]) -> bool:
    """Raise ``PermissionDeniedError`` naming the commands of ``owner``'s scripts
    ``names`` this connection's user may not run on the queue's keys; True otherwise."""
    refused = await refused_commands(client, owner, names)
    if refused:
        raise refused_error(owner.name, refused)
    return True


def refused_error(queue_name: str, refused: list[str]) -> PermissionDeniedError:
    """The error naming ``refused`` commands of queue ``queue_name``'s scripts."""
    names = " ".join(f"+{c.lower()}" for c in refused)
    return PermissionDeniedError(
        f"Redis would refuse {', '.join(refused)} for lack of permission in the scripts "
        f"of queue {queue_name!r}: the Redis user may not run it on the queue's keys "
        "(~<prefix>:{<queue>}:*), and a script refused part-way would leave its work half "
        "done (Redis does not roll a script back), so nothing runs until it may. Grant "
        f"{names}, or apply the rules `kitium-queue acl redis-rules` prints (with "
        "--feature for the optional features enabled; docs/RELIABILITY.md, Redis ACL)"
    )
