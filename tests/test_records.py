"""``records.JOB_FIELDS`` is the job hash's one table: checked against every Lua script."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kitium_queue
from kitium_queue.records import JOB_FIELDS, META_FIELDS

LUA_DIR = Path(kitium_queue.__file__).resolve().parent / "lua"
_HASH_CALL = re.compile(
    r"redis\.p?call\(\s*'(HSET|HSETNX|HMSET|HGET|HMGET|HDEL|HEXISTS|HINCRBY|HINCRBYFLOAT|"
    r"HSTRLEN)'\s*,"
)
_LITERAL = re.compile(r"""^(?:'([^']*)'|"([^"]*)")$""")
# Where a command's fields are, after the key: every other argument from the first
# (field, value pairs), every argument, or only the first.
_PAIRS, _ALL = ("HSET", "HMSET"), ("HMGET", "HDEL")


def _strip_comments(source: str) -> str:
    source = re.sub(r"--\[(=*)\[.*?\]\1\]", "", source, flags=re.S)
    return re.sub(r"--[^\n]*", "", source)


def _arguments(source: str, start: int) -> list[str]:
    """The top-level comma-separated arguments of the call whose '(' precedes ``start``."""
    depth, args, cur, quote = 0, [], "", ""
    for ch in source[start:]:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            if depth == 0:
                args.append(cur.strip())
                return args
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        cur += ch
    raise AssertionError(f"unbalanced call at {source[start - 40 : start + 40]!r}")


def _fields(is_key: re.Pattern[str]) -> dict[str, set[str]]:
    """Field name -> the Lua files that use it, over the hashes whose key matches."""
    found: dict[str, set[str]] = {}
    # Lua files, and the Lua that features build in Python (flow control's fragments).
    embedded = [p for p in sorted(LUA_DIR.parent.rglob("*.py")) if "redis.call(" in p.read_text()]
    # Lua files of the core (lua/) and of features (features/**/*.lua).
    for path in [*sorted(LUA_DIR.parent.rglob("*.lua")), *embedded]:
        source = _strip_comments(path.read_text())
        for m in _HASH_CALL.finditer(source):
            command = m.group(1)
            key, *rest = _arguments(source, m.end())
            if not is_key.fullmatch(key):
                continue
            if command in _PAIRS:
                names = rest[0::2]
            elif command in _ALL:
                names = rest
            else:
                names = rest[:1]
            for name in names:
                lit = _LITERAL.match(name)
                assert lit, f"{path.name}: {command} of a computed field {name!r}"
                found.setdefault(lit.group(1) or lit.group(2), set()).add(path.name)
    return found


JOB_KEY = re.compile(r"jk|job_key\(.*\)")
META_KEY = re.compile(r"K_META|.*\.\.\s*'meta'")


def test_lua_sources_are_found() -> None:
    assert len(list(LUA_DIR.rglob("*.lua"))) > 10
    used = _fields(JOB_KEY)
    assert {"n", "d", "st", "lt", "a"} <= set(used)


def test_every_job_field_a_script_uses_is_documented() -> None:
    used = _fields(JOB_KEY)
    missing = {f: sorted(files) for f, files in used.items() if f not in JOB_FIELDS}
    assert not missing, f"job hash fields missing from records.JOB_FIELDS: {missing}"


def test_no_documented_job_field_is_stale() -> None:
    used = _fields(JOB_KEY)
    stale = sorted(set(JOB_FIELDS) - set(used))
    assert not stale, f"records.JOB_FIELDS documents fields no script uses: {stale}"


def test_meta_fields_are_documented() -> None:
    used = _fields(META_KEY)
    assert "paused" in used
    missing = sorted(set(used) - set(META_FIELDS))
    assert not missing, f"meta hash fields missing from records.META_FIELDS: {missing}"


@pytest.mark.parametrize("name", sorted(JOB_FIELDS))
def test_each_field_says_what_it_holds_and_who_writes_it(name: str) -> None:
    field = JOB_FIELDS[name]
    assert field.name == name and field.meaning and field.writers
