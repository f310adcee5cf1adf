"""The package imports only names the oldest redis-py it allows has.

pyproject.toml admits ``redis>=8.1``, and Python 3.10 resolves 8.1.0, while the suite
runs under the newest 8.x. A name that only a later release has (8.2's
``MaxClientsReachedError`` was one) makes ``import kitium_queue`` fail for everyone on
the floor release, and no test under the newest release sees it. This test reads every
``from redis... import ...`` of the package and checks each name against what 8.1.0 has
(recorded below from 8.1.0 itself). A new name fails here until it is checked there:
``KQ_PYTHON=python3.10 KQ_VENV=.venv310 ./scripts/test`` installs 8.1.0; if the name is
missing there, detect the case another way (by the server's words, say) or raise the
floor in pyproject.toml.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (module, name) imported from redis-py by the package, each present in redis-py 8.1.0.
#: ``""``: the module itself (``import redis.asyncio``).
ON_THE_FLOOR = {
    ("redis", ""),
    ("redis.asyncio", ""),
    ("redis.asyncio", "connection"),
    ("redis.asyncio.cluster", "ClusterNode"),
    ("redis.asyncio.cluster", "RedisCluster"),
    ("redis.asyncio.connection", "ConnectionPool"),
    ("redis.asyncio.connection", "parse_url"),
    ("redis.asyncio.retry", "Retry"),
    ("redis.asyncio.sentinel", "MasterNotFoundError"),
    ("redis.asyncio.sentinel", "Sentinel"),
    ("redis.asyncio.sentinel", "SentinelConnectionPool"),
    ("redis.backoff", "NoBackoff"),
    ("redis.crc", "key_slot"),
    ("redis.exceptions", "AuthenticationError"),
    ("redis.exceptions", "BusyLoadingError"),
    ("redis.exceptions", "ClusterDownError"),
    ("redis.exceptions", "ClusterError"),
    ("redis.exceptions", "ConnectionError"),
    ("redis.exceptions", "InvalidResponse"),
    ("redis.exceptions", "MaxConnectionsError"),
    ("redis.exceptions", "NoPermissionError"),
    ("redis.exceptions", "NoScriptError"),
    ("redis.exceptions", "OutOfMemoryError"),
    ("redis.exceptions", "ReadOnlyError"),
    ("redis.exceptions", "RedisClusterException"),
    ("redis.exceptions", "RedisError"),
    ("redis.exceptions", "ResponseError"),
    ("redis.exceptions", "TimeoutError"),
    ("redis.exceptions", "TryAgainError"),
    ("redis.retry", "Retry"),
}


def _imported_from_redis() -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for path in sorted((ROOT / "src" / "kitium_queue").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "redis" or node.module.startswith("redis."):
                    for alias in node.names:
                        found.setdefault((node.module, alias.name), f"{where}:{node.lineno}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "redis" or alias.name.startswith("redis."):
                        found.setdefault((alias.name, ""), f"{where}:{node.lineno}")
    return found


def test_every_name_imported_from_redis_is_on_the_floor() -> None:
    found = _imported_from_redis()
    assert found, "no import of redis-py found: the scan is broken"
    new = {pair: where for pair, where in found.items() if pair not in ON_THE_FLOOR}
    assert not new, (
        "imports from redis-py not checked against 8.1.0, the oldest release "
        f"pyproject.toml allows: {new}. See this file's docstring."
    )


def test_the_floor_recorded_here_is_pyprojects() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'"redis\[hiredis\]>=([0-9.]+),', text)
    assert match is not None, "redis-py's requirement not found in pyproject.toml"
    assert match.group(1) == "8.1", (
        f"pyproject.toml's redis-py floor is {match.group(1)}: record what that release "
        "has in ON_THE_FLOOR (this test's names were read off 8.1.0)"
    )
