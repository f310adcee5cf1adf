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

Each store also runs its scripts on a fast path (``_fast_scripts``). On every
``EVAL``/``EVALSHA`` fakeredis compiles the whole script text, runs a full Lua garbage
collection and lists every Lua global from Python (the globals again before every
``redis.call``); on a store:

* a script is compiled once and its function kept, with its sha, by its text (at most
  ``_COMPILED_MAX`` of them, all dropped by ``SCRIPT FLUSH``); its top-level code runs
  on every call, with that call's ``KEYS`` and ``ARGV``. The server's script cache is
  fakeredis' own: ``SCRIPT FLUSH`` then ``EVALSHA`` answers ``NOSCRIPT`` as before;
* Lua's incremental collector frees each call's garbage, with no full collection;
* a script that creates a global is refused when it assigns it (a ``__newindex`` on
  ``_G``, as Redis 6 does), with fakeredis' message (inside a Lua ``pcall`` that error
  is caught, as on Redis, where fakeredis refuses the script after it); a global made
  past the guard (``rawset``) is dropped and refused after the script, as fakeredis
  does. fakeredis' own listing of the globals skips these runtimes.

Only the stores made here take that path: ``eval`` of fakeredis' socket is wrapped once
and hands a server without the ``_FAST_ATTR`` marker to the original, so other
fakeredis servers in the process keep fakeredis' behaviour. A fakeredis whose internals
differ from the ones this relies on (``_STOCK_EVAL_NAMES``) is left as it is: the
stores then run on fakeredis' own path, with the same replies, only slower.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["memory_server"]

_servers: dict[str, Any] = {}
_lock = threading.Lock()
_hook_lock = threading.Lock()

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

#: The fast path's helpers in a store's runtime: the ``KEYS``/``ARGV`` of a call in one
#: crossing, the guard on new globals, and the sweep of globals set past the guard.
_FAST = """
function(expected, refuse)
  local rawset, next = rawset, next
  local function set_keys_argv(numkeys, all)
    local keys, argv = {}, {}
    for i = 1, numkeys do keys[i] = all[i] end
    for i = numkeys + 1, #all do argv[i - numkeys] = all[i] end
    rawset(_G, 'KEYS', keys)
    rawset(_G, 'ARGV', argv)
  end
  local function sweep()
    local bad
    for k in next, _G do
      if expected[k] == nil then bad = bad or {}; bad[#bad + 1] = k end
    end
    if bad == nil then return nil end
    local names = {}
    for i, k in ipairs(bad) do rawset(_G, k, nil); names[i] = tostring(k) end
    return table.concat(names, ', ')
  end
  setmetatable(_G, {__newindex = function(_, k) refuse(k) end})
  return set_keys_argv, sweep
end
"""

#: The marker on the stores made here: their ``_FastScripts``.
_FAST_ATTR = "_kitium_fast_scripts"

#: How many compiled scripts a store keeps (least recently run dropped first).
_COMPILED_MAX = 256

#: The names fakeredis' ``eval`` uses (2.41): the fast path does the same with them. A
#: fakeredis whose ``eval`` uses others keeps its own path.
_STOCK_EVAL_NAMES = frozenset(
    {
        "DRAGONFLY_SCRIPT_ERROR_MSG", "LUA_COMMAND_ARG_MSG", "LUA_MODULE", "LuaError",
        "NEGATIVE_KEYS_MSG", "SCRIPT_ERROR_MSG", "SimpleError", "TOO_MANY_KEYS_MSG",
        "_check_for_lua_globals", "_convert_lua_result", "_fieldsets",
        "_get_lua_bad_command_arg_msg", "_get_server_runtime", "_lua_current_socket",
        "_lua_expected_globals", "_lua_set_keys_argv", "_script_resp", "_server", "decode",
        "encode", "execute", "format", "hashlib", "hexdigest", "len", "msgs",
        "script_cache", "server_type", "sha1", "table_from", "value", "version",
    }
)  # fmt: skip

#: The scripting module of fakeredis once its ``eval`` is wrapped, else ``None``.
_hooked: list[Any] = []
#: The Lua runtimes of the fast stores: fakeredis' global listing skips them.
_guarded: set[Any] = set()


def memory_server(name: str, *, fast_scripts: bool = True) -> Any:
    """The store of ``memory://<name>`` in this process (made at first use).

    ``fast_scripts=False`` makes it run its scripts on fakeredis' own path (to compare
    the two); it counts only when the store is made."""
    import fakeredis

    with _lock:
        server = _servers.get(name)
        if server is None:
            server = fakeredis.FakeServer()
            _redis_errors(server)
            if fast_scripts:
                _fast_scripts(server)
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


def _fast_scripts(server: Any) -> bool:
    """Put ``server`` (its Lua runtime made) on the fast script path (module
    docstring); ``False``, the server untouched, where fakeredis differs."""
    module = _scripting_module()
    runtime = getattr(server, "_lua_runtime", None)
    expected = getattr(server, "_lua_expected_globals", None)
    if module is None or runtime is None or not isinstance(expected, set):
        return False
    if not hasattr(server, "_lua_current_socket") or not isinstance(server.script_cache, dict):
        return False  # pragma: no cover - another fakeredis layout
    if runtime.eval("getmetatable(_G)") is not None:
        return False  # pragma: no cover - a runtime that guards its globals already
    simple_error, message = module.SimpleError, module.msgs.GLOBAL_VARIABLE_MSG

    def refuse(name: Any) -> None:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        raise simple_error(message.format(text))

    known = runtime.table_from(dict.fromkeys(expected, True))
    set_keys_argv, sweep = runtime.eval(_FAST)(known, refuse)
    _guarded.add(runtime)
    setattr(server, _FAST_ATTR, _FastScripts(module, server, runtime, set_keys_argv, sweep))
    return True


def _scripting_module() -> Any:
    """fakeredis' scripting module with its ``eval`` wrapped (once), or ``None`` where
    its ``eval`` is not the one the fast path follows."""
    with _hook_lock:
        if _hooked:
            return _hooked[0]
        try:
            from fakeredis.commands_mixins import scripting_mixin as module

            mixin = module.ScriptingCommandsMixin
            stock_eval = mixin.__dict__["eval"]
            stock_check = module._check_for_lua_globals
            names = frozenset(stock_eval.__code__.co_names)
            module.LUA_MODULE.LuaSyntaxError  # noqa: B018 - the fast path catches it
        except (ImportError, AttributeError, KeyError):  # pragma: no cover - another layout
            names = frozenset()
        if names != _STOCK_EVAL_NAMES:
            _hooked.append(None)  # pragma: no cover - another fakeredis
            return None  # pragma: no cover

        def eval(self: Any, script: bytes, numkeys: int, *keys_and_args: bytes) -> Any:
            fast = getattr(self._server, _FAST_ATTR, None)
            if fast is None:
                return stock_eval(self, script, numkeys, *keys_and_args)
            return fast.eval(self, script, numkeys, keys_and_args)

        def check_for_lua_globals(lua_runtime: Any, expected_globals: set[Any]) -> None:
            if lua_runtime not in _guarded:
                stock_check(lua_runtime, expected_globals)

        eval.__wrapped__ = stock_eval  # type: ignore[attr-defined]
        setattr(mixin, "eval", eval)  # noqa: B010 - mypy refuses a method assignment
        module._check_for_lua_globals = check_for_lua_globals
        _hooked.append(module)
        return module


class _FastScripts:
    """A fast store's script path: fakeredis' ``eval`` with the script's compiled
    function kept and no per-call full collection or Python listing of globals."""

    def __init__(
        self, module: Any, server: Any, runtime: Any, set_keys_argv: Any, sweep: Any
    ) -> None:
        self.module, self.server, self.runtime = module, server, runtime
        self.set_keys_argv, self.sweep = set_keys_argv, sweep
        self.compiled: OrderedDict[bytes, tuple[bytes, Any]] = OrderedDict()
        self.cache_seen: Any = server.script_cache

    def known(self, script: bytes) -> tuple[bytes, Any]:
        """The sha of ``script`` and its compiled function, ``None`` if not compiled yet
        (by the script's text: an ``EVALSHA`` hands the cache's own text, found at
        once, an ``EVAL`` a copy, compared, either cheaper than hashing it again)."""
        compiled = self.compiled
        if self.server.script_cache is not self.cache_seen:  # SCRIPT FLUSH
            compiled.clear()
            self.cache_seen = self.server.script_cache
        entry = compiled.get(script)
        if entry is None:
            return hashlib.sha1(script).hexdigest().encode(), None
        compiled.move_to_end(script)
        return entry

    def compile(self, sha1: bytes, script: bytes) -> Any:
        """``script`` compiled and kept: fakeredis' error where it does not compile."""
        try:
            function = self.runtime.compile(script)
        except self.module.LUA_MODULE.LuaSyntaxError:
            self.runtime.execute(script)  # raises fakeredis' own error for it
            raise  # pragma: no cover - compiles there
        self.compiled[script] = (sha1, function)
        if len(self.compiled) > _COMPILED_MAX:
            self.compiled.popitem(last=False)
        return function

    def eval(self, sock: Any, script: bytes, numkeys: int, keys_and_args: tuple[bytes, ...]) -> Any:
        """``EVAL`` (and ``EVALSHA``) on the fast path: fakeredis' replies."""
        module = self.module
        msgs, simple_error = module.msgs, module.SimpleError
        if numkeys > len(keys_and_args):
            raise simple_error(msgs.TOO_MANY_KEYS_MSG)
        if numkeys < 0:
            raise simple_error(msgs.NEGATIVE_KEYS_MSG)
        sha1, function = self.known(script)
        server = self.server
        server.script_cache[sha1] = script
        server._lua_current_socket[0] = sock
        sock._script_resp = 2
        caller_fieldsets, sock._fieldsets = sock._fieldsets, {}
        try:
            if function is None:
                function = self.compile(sha1, script)
            self.set_keys_argv(numkeys, self.runtime.table_from(keys_and_args))
            result = function()
        except simple_error as ex:
            raise simple_error(self._script_error(sock, sha1, ex.value)) from None
        except module.LUA_MODULE.LuaError as ex:
            dragonfly = sock.server_type == "dragonfly"
            template = msgs.DRAGONFLY_SCRIPT_ERROR_MSG if dragonfly else msgs.SCRIPT_ERROR_MSG
            raise simple_error(template.format(sha1.decode(), ex)) from None
        finally:
            sock._script_resp = None
            sock._fieldsets = caller_fieldsets
            names = self.sweep()  # also after a failed script: none outlives it
        if names is not None:
            raise simple_error(msgs.GLOBAL_VARIABLE_MSG.format(names.decode("utf-8", "replace")))
        return sock._convert_lua_result(result, nested=False)

    def _script_error(self, sock: Any, sha1: bytes, error_msg: str) -> str:
        """The reply of a script that failed with ``error_msg`` (as fakeredis words it)."""
        msgs = self.module.msgs
        if error_msg == msgs.LUA_COMMAND_ARG_MSG:
            wording = self.module._get_lua_bad_command_arg_msg
            error_msg = wording(self.server.server_type, sock.version)
        elif sock.version < (7,):
            error_msg = msgs.SCRIPT_ERROR_MSG.format(sha1.decode(), error_msg)
        if sock.server_type == "dragonfly":
            error_msg = msgs.DRAGONFLY_SCRIPT_ERROR_MSG.format(sha1.decode(), error_msg)
        return error_msg
