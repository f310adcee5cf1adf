"""Tenancy's registration again by ``sync(queues=...)`` and the extras' import checks.

* ``sync(queues=[...])`` writes each queue's ``tenancy:registered`` mark, one of the
  queue's keys. A Redis user that may change the registry but not that queue's keys
  was refused there, and the refusal named the registry's keys (which it may write)
  as the ones to grant; it names the queue's keys now.
* ``sync(queues=...)`` and ``get_tenant_usage(..., queues=...)`` sorted the names
  before checking them: a list mixing a name with something else (``["a", 1]``) failed
  with the ``TypeError`` of the comparison instead of naming the bad entry.
* The extras' check (``switchboard._require``) turned only ``ImportError`` into the
  refusal naming the extra: a package installed in part whose module raises something
  else when imported (a file cut short: ``SyntaxError``; a broken build: anything)
  escaped as that exception, without the extra or the ``pip install`` line.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import redis as redis_sync

from _redis import RedisServer
from kitium_queue import JobQueue
from kitium_queue.errors import ConfigurationError, PermissionDeniedError
from kitium_queue.features.tenancy import TenantRegistry

PASSWORD = f"kq-52b-{uuid.uuid4().hex}"


async def test_sync_refused_on_a_queue_names_that_queues_keys(server: RedisServer) -> None:
    prefix = f"s{uuid.uuid4().hex[:6]}"
    q = JobQueue("rq", redis=server.url, prefix=prefix)
    try:
        async with TenantRegistry(redis=server.url, prefix=prefix) as reg:
            await reg.create_tenant({"tenant_id": "t"})
            await reg.attach(q)
    finally:
        await q.close()
    admin = redis_sync.Redis(host="127.0.0.1", port=server.port)
    try:
        # May change the registry (the --access admin key pattern), not queue "other".
        registry_keys = f"~{prefix}:{{!access}}:*"
        admin.execute_command(
            "ACL", "SETUSER", "regadmin", "reset", "on", f">{PASSWORD}", registry_keys, "+@all"
        )
    finally:
        admin.close()
    url = f"redis://regadmin:{PASSWORD}@127.0.0.1:{server.port}/0"
    async with TenantRegistry(redis=url, prefix=prefix) as reg:
        with pytest.raises(PermissionDeniedError) as err:
            await reg.sync(queues=["other"])
    text = str(err.value)
    assert "the keys of queue 'other'" in text, text
    assert f"~{prefix}:{{other}}:*" in text and "--queue other --feature tenancy" in text, text
    assert "changing tenants needs read and write access" not in text, text
    assert PASSWORD not in text


@pytest.mark.parametrize("names", [["a", 1], [None, "b"], ["a", b"b"]])
async def test_queue_names_that_are_not_strings_are_refused_as_such(
    redis_url: str, prefix: str, names: list[object]
) -> None:
    async with TenantRegistry(redis=redis_url, prefix=prefix) as reg:
        with pytest.raises(ConfigurationError, match="invalid queue name: must be a string"):
            await reg.sync(queues=names)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="invalid queue name: must be a string"):
            await reg.get_tenant_usage("t", names)  # type: ignore[arg-type]
        assert await reg.queues() == []  # nothing registered


_CONFIGURE = """
import sys
sys.path[:0] = {path!r}
from kitium_queue import ConfigurationError, JobQueue
try:
    JobQueue("broken", redis="memory://broken-extras",
             advanced={{"exactly_once": {{"enabled": True}}, **{config!r}}})
    print("configured")
except ConfigurationError as exc:
    print("refused:", exc)
print("idempotency loaded:", "kitium_queue.features.idempotency.manager" in sys.modules)
"""

_BROKEN = {
    # A file cut short by an interrupted install.
    "syntax": (
        {"httpx/__init__.py": "from ._api import (\n"},
        {"webhooks": {"enabled": True}},
        "advanced.webhooks needs the optional extra 'webhooks'",
        "SyntaxError",
    ),
    # A build that fails when loaded.
    "runtime": (
        {"zstandard.py": "raise RuntimeError('zstd backend mismatch')\n"},
        {"cost_optimization": {"enabled": True, "compression": {"algorithm": "zstd"}}},
        "advanced.cost_optimization needs the optional extra 'compression'",
        "RuntimeError: zstd backend mismatch",
    ),
}


@pytest.mark.parametrize("case", sorted(_BROKEN))
def test_an_extra_that_fails_to_import_otherwise_is_refused_naming_it(
    tmp_path: Path, case: str
) -> None:
    files, config, needle, cause = _BROKEN[case]
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    code = textwrap.dedent(_CONFIGURE.format(path=[str(tmp_path)], config=config))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert f"refused: {needle}" in out, out + done.stderr
    assert cause in out and "pip install" in out, out
    assert "idempotency loaded: False" in out, out
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


# ------------------------------------------------------------------ read-only commands
#: A reader's commands, without the read-only script commands.
_READS = ("+ping", "+hget", "+hgetall", "+smembers", "+hmget", "+scard", "+zcard", "+exists",
          "+time")  # fmt: skip


@pytest.mark.parametrize("plain", [(), ("+evalsha", "+eval")], ids=["bare", "with-evalsha"])
async def test_a_reader_granted_the_read_only_commands_later_reads_without_a_restart(
    server: RedisServer, plain: tuple[str, ...]
) -> None:
    """A user that may only read, not granted EVALSHA_RO: the plain commands are refused
    too (as a command, or on keys it may only read), so the refusal names the read-only
    commands, and they are tried again at the next read; once granted, the same registry
    reads. (The fallback was remembered for the client whatever the plain commands
    answered: the refusal said to grant +evalsha, or the read-only commands, and after
    the grant the process kept running EVALSHA, refused until restarted.)"""
    prefix = f"s{uuid.uuid4().hex[:6]}"
    q = JobQueue("rq", redis=server.url, prefix=prefix)
    try:
        async with TenantRegistry(q) as reg:
            await reg.create_tenant({"tenant_id": "t"})
            await q.add_jobs([("x", {}, {"tenant_id": "t"}) for _ in range(2)])
    finally:
        await q.close()
    admin = redis_sync.Redis(host="127.0.0.1", port=server.port)
    try:
        rules = [f"%R~{prefix}:*", "-@all", *_READS, *plain]
        admin.execute_command("ACL", "SETUSER", "reader", "reset", "on", f">{PASSWORD}", *rules)
        url = f"redis://reader:{PASSWORD}@127.0.0.1:{server.port}/0"
        async with TenantRegistry(redis=url, prefix=prefix) as reg:
            for _ in range(2):  # refused alike each time: not given up on
                with pytest.raises(PermissionDeniedError) as err:
                    await reg.get_tenant_usage("t", ["rq"])
                assert "+evalsha_ro +eval_ro" in str(err.value), str(err.value)
            assert await reg.queues() == ["rq"]  # every queue kept when it cannot check
            admin.execute_command("ACL", "SETUSER", "reader", "+evalsha_ro", "+eval_ro")
            admin.script_flush()  # EVAL_RO too
            assert (await reg.get_tenant_usage("t", ["rq"])).queued == 2
            assert (await reg.get_usages(["t"], "rq"))["t"].queued == 2
            assert await reg.queues() == ["rq"]
    finally:
        admin.close()
