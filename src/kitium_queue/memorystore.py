"""The stores of the embedded ``memory://`` backend: one fakeredis server per name and
process, shared by every client of that name (``ConnectionFactory.client``).

fakeredis runs the queue's Lua scripts in Lua 5.1 (lupa), as Redis does, and each store
is given the error replies of a Redis server there (``_redis_errors``):

* ``redis.pcall`` answers a failed command with ``{err = <a Lua string>}``; fakeredis
  gave a Python string, which ``string.find`` and ``..`` refuse: a script that inspects
  the error (``KQ_DAMAGED_KEY`` on a damaged id counter) failed with a Lua type error
  instead of reporting the damage.
* ``error(t)`` with an error table (``redis.error_reply(...)``, a ``redis.pcall``
  error) ends the script with ``t.err`` as its error reply, as Redis does; fakeredis
  replied ``"Error running script ... @user_script:?: "``, the message and its code
  lost. Inside a Lua ``pcall`` such an error is caught as before (as a value whose
  ``tostring`` is the message, where Redis gives the table).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["memory_server"]

_servers: dict[str, Any] = {}
_lock = threading.Lock()

#: Installed once in each store's Lua runtime, before any script of the queue runs.
_PATCH = """
function(raise)
  local raw_pcall, raw_error = redis.pcall, error
  redis.pcall = function(...)
    local r = raw_pcall(...)
    if type(r) == 'table' and r.err ~= nil and type(r.err) ~= 'string' then
      r.err = tostring(r.err)
    end
    return r
  end
  error = function(e, level)
    if type(e) == 'table' and e.err ~= nil then raise(tostring(e.err)) end
    if level == nil then level = 1 end
    if level > 0 then level = level + 1 end
    return raw_error(e, level)
  end
end
"""


def memory_server(name: str) -> Any:
    """The store of ``memory://<name>`` in this process (made at first use)."""
    import fakeredis

    with _lock:
        server = _servers.get(name)
        if server is None:
            server = fakeredis.FakeServer()
            _redis_errors(server)
            _servers[name] = server
        return server


def _redis_errors(server: Any) -> None:
    """Give ``server``'s Lua runtime Redis' error replies (module docstring). A
    fakeredis without the internals this relies on is left as it is."""
    import fakeredis

    try:
        from fakeredis._helpers import SimpleError
    except ImportError:  # pragma: no cover - another fakeredis layout
        return

    def raise_reply(message: Any) -> None:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        raise SimpleError(str(text))

    fakeredis.FakeRedis(server=server).eval("return 1", 0)  # makes the Lua runtime
    runtime = getattr(server, "_lua_runtime", None)
    if runtime is None:  # pragma: no cover - another fakeredis layout
        return
    runtime.eval(_PATCH)(raise_reply)
