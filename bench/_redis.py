"""Private ``redis-server`` processes for the benchmarks: the test suite's helper
(``tests/_redis.py``), loaded from its file so both start, check and stop servers the
same way."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "tests" / "_redis.py"
_spec = importlib.util.spec_from_file_location("kq_tests_redis", _PATH)
assert _spec is not None and _spec.loader is not None
_mod = importlib.util.module_from_spec(_spec)
sys.modules["kq_tests_redis"] = _mod
_spec.loader.exec_module(_mod)

RedisServer = _mod.RedisServer
RedisServerError = _mod.RedisServerError
free_port = _mod.free_port
redis_server_executable = _mod.redis_server_executable

__all__ = ["RedisServer", "RedisServerError", "free_port", "redis_server_executable"]
