"""Multi-tenancy with read-only Redis users, gone queues registered again, and extras
installed in part.

* A Redis user that may only read the keys (``%R~<prefix>:*``: a dashboard's or a
  monitoring account) could not read a tenant's usage: the registry ran ``tn_usage.lua``
  (and ``tn_present.lua``, which queues are gone) with ``EVALSHA``, which Redis refuses
  on keys the user may only read, and the refusal named ``~<prefix>:{!access}:*``, the
  registry's keys, whatever was refused. The read-only scripts run with ``EVALSHA_RO``
  now (``EVALSHA`` where the server or the user lacks it), ``acl redis-rules --feature
  tenancy`` grants it, and a refusal names the keys (or command) refused and what to
  grant.
* A queue whose keys were deleted left the registry's set at the next read, and only a
  worker registered it again: ``sync()`` (``tenants sync``) copied nothing into it, and a
  producer registered only at its first job with a tenant. ``sync(queues=...)`` and
  ``tenants sync APP [--queue NAME]`` register again the queues named and the registry's
  own queue; a producer checks the queue's registration mark once per sync interval and
  registers again when it is gone.
* ``features/tenancy/keys.py`` cited ``install.live_queues`` (defined in ``roster.py``).
* ``advanced.monitoring.prometheus`` (and encryption, webhooks, zstd compression) were
  checked with ``find_spec``: a package installed in part passed, and failed later, after
  the sections before were installed. The check imports what each feature uses now.
"""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio
from click.testing import CliRunner

from _redis import RedisServer
from helpers import app_module
from kitium_queue import JobQueue
from kitium_queue.cli import main as cli_main
from kitium_queue.errors import ConfigurationError, PermissionDeniedError
from kitium_queue.features.access.redisacl import FEATURE_COMMANDS, redis_acl_rules
from kitium_queue.features.advanced import switchboard
from kitium_queue.features.tenancy import TenantRegistry
from kitium_queue.features.tenancy import install as tn_install
from kitium_queue.features.tenancy import keys as tk
from kitium_queue.keys import QueueKeys

PASSWORD = f"kq-ro-{uuid.uuid4().hex}"
SRC = Path(__file__).resolve().parents[1] / "src" / "kitium_queue"
#: What a user that may only read needs to read tenants and usage (docs/tenancy.md).
READER = (
    "+ping", "+hget", "+hgetall", "+smembers", "+evalsha_ro", "+eval_ro",
    "+hmget", "+scard", "+zcard", "+exists", "+time",
)  # fmt: skip


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def admin(acl_server: RedisServer) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis(host="127.0.0.1", port=acl_server.port)
    client.flushall()
    client.execute_command("ACL", "LOG", "RESET")
    yield client
    for user in client.acl_users():
        if user != "default":
            client.acl_deluser(user)
    client.close()


def _user(admin: redis_sync.Redis, port: int, *rules: str) -> str:
    name = f"u{uuid.uuid4().hex[:8]}"
    admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules)
    return f"redis://{name}:{PASSWORD}@127.0.0.1:{port}/0"


def _denials(admin: redis_sync.Redis) -> list[dict[str, Any]]:
    return [e for e in admin.acl_log() if e.get("object") != "client|setinfo"]


async def _fill(url: str, prefix: str, name: str = "rq") -> None:
    """Tenant ``t`` and two of its jobs in queue ``name`` (an administrator's user)."""
    q = JobQueue(name, redis=url, prefix=prefix)
    try:
        async with TenantRegistry(q) as reg:
            await reg.create_tenant({"tenant_id": "t", "quota": {"max_queue_size": 10}})
            await q.add_jobs([("x", {}, {"tenant_id": "t"}) for _ in range(2)])
    finally:
        await q.close()


# ------------------------------------------------------------------ read-only users
async def test_a_read_only_user_reads_tenants_and_their_usage(
    acl_server: RedisServer, admin: redis_sync.Redis
) -> None:
    prefix = f"ro{uuid.uuid4().hex[:6]}"
    await _fill(acl_server.url, prefix)
    admin.execute_command("ACL", "LOG", "RESET")
    url = _user(admin, acl_server.port, f"%R~{prefix}:*", "resetchannels", "-@all", *READER)
    async with TenantRegistry(redis=url, prefix=prefix) as reg:
        assert [c.tenant_id for c in await reg.list_tenants()] == ["t"]
        assert await reg.queues() == ["rq"]
        usage = await reg.get_tenant_usage("t")
        assert usage.queued == 2 and usage.queues["rq"].queued == 2
        assert (await reg.get_usages(["t"], "rq"))["t"].queued == 2
    assert _denials(admin) == []


async def test_the_tenancy_rules_with_read_only_keys_read_usage(
    acl_server: RedisServer, admin: redis_sync.Redis
) -> None:
    """``acl redis-rules --feature tenancy`` grants the read-only script commands: its
    rules, with the key patterns made read-only, read usage with an empty ACL LOG."""
    prefix = f"ro{uuid.uuid4().hex[:6]}"
    await _fill(acl_server.url, prefix)
    admin.execute_command("ACL", "LOG", "RESET")
    rules = redis_acl_rules("reader", ["rq"], prefix=prefix, features=["tenancy"])
    assert {"evalsha_ro", "eval_ro"} <= set(FEATURE_COMMANDS["tenancy"])
    read_only = [f"%R{k}" for k in rules.keys] + [f"%R~{tk.registry(prefix)}*"]
    url = _user(admin, acl_server.port, *read_only, *rules.rules()[len(rules.keys) :])
    async with TenantRegistry(redis=url, prefix=prefix) as reg:
        assert (await reg.get_tenant_usage("t", ["rq"])).queued == 2
        assert await reg.queues() == ["rq"]
    assert _denials(admin) == []


async def test_without_the_read_only_commands_the_scripts_run_with_evalsha(
    acl_server: RedisServer, admin: redis_sync.Redis
) -> None:
    """A user not granted EVALSHA_RO (rules written before it was listed) reads as
    before; the refusal is met once per connection, not once per read. memory://
    (no EVALSHA_RO at all) reads too."""
    prefix = f"ro{uuid.uuid4().hex[:6]}"
    await _fill(acl_server.url, prefix)
    admin.execute_command("ACL", "LOG", "RESET")
    url = _user(admin, acl_server.port, f"~{prefix}:*", "+@all", "-evalsha_ro", "-eval_ro")
    async with TenantRegistry(redis=url, prefix=prefix) as reg:
        for _ in range(3):
            assert (await reg.get_tenant_usage("t")).queued == 2
            assert (await reg.get_usages(["t"], "rq"))["t"].queued == 2
    refused = _denials(admin)
    assert {e["object"] for e in refused} == {"evalsha_ro"}, refused
    assert sum(int(e["count"]) for e in refused) == 1, refused

    q = JobQueue("mq", redis=f"memory://{uuid.uuid4().hex}")
    try:
        async with TenantRegistry(q) as reg:
            await reg.create_tenant({"tenant_id": "t"})
            await q.add_job("x", {}, tenant_id="t")
            assert (await reg.get_tenant_usage("t")).queued == 1
            assert await reg.queues() == ["mq"]
    finally:
        await q.close()


async def test_refusals_name_the_keys_or_command_refused(
    acl_server: RedisServer, admin: redis_sync.Redis
) -> None:
    prefix = f"ro{uuid.uuid4().hex[:6]}"
    await _fill(acl_server.url, prefix)
    registry_keys = f"~{tk.registry(prefix)}*"
    port = acl_server.port

    # A reader's change: refused on the registry's keys, which need write access.
    url = _user(admin, port, f"%R~{prefix}:*", "+@all")
    async with TenantRegistry(redis=url, prefix=prefix) as reg:
        with pytest.raises(PermissionDeniedError) as err:
            await reg.update_tenant("t", weight=2)
    text = str(err.value)
    assert "changing tenants needs read and write access" in text, text
    assert registry_keys in text and "--access admin" in text, text
    assert PASSWORD not in text

    # May write the registry, only read the queue: stored, its copy refused there.
    url = _user(admin, port, f"~{prefix}:{{!access}}:*", f"%R~{prefix}:{{rq}}:*", "+@all")
    async with TenantRegistry(redis=url, prefix=prefix) as reg:
        with pytest.raises(PermissionDeniedError) as err:
            await reg.update_tenant("t", weight=3)
    text = str(err.value)
    assert "the keys of queue 'rq'" in text and f"~{prefix}:{{rq}}:*" in text, text
    assert "--queue rq --feature tenancy" in text and "stored in the registry" in text, text
    async with TenantRegistry(redis=acl_server.url, prefix=prefix) as reg:
        cfg = await reg.get_tenant("t")
        assert cfg is not None and cfg.weight == 3

    # May read the registry only: a queue's usage refused on that queue's keys.
    url = _user(admin, port, f"%R~{tk.registry(prefix)}*", "+@all")
    async with TenantRegistry(redis=url, prefix=prefix) as reg:
        with pytest.raises(PermissionDeniedError) as err:
            await reg.get_tenant_usage("t", ["rq"])
    text = str(err.value)
    assert f"%R~{prefix}:{{rq}}:*" in text and "evalsha_ro" in text, text

    # A command refused: named, with what to grant.
    reader = [r for r in READER if r != "+smembers"]
    url = _user(admin, port, f"%R~{prefix}:*", "-@all", *reader)
    async with TenantRegistry(redis=url, prefix=prefix) as reg:
        with pytest.raises(PermissionDeniedError) as err:
            await reg.queues()
    assert "(+smembers" in str(err.value), str(err.value)


# ------------------------------------------------------------------ gone queues, again
async def _obliterate(url: str, keys: QueueKeys) -> None:
    """Delete every key of the queue (how a queue is done away with)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        doomed = [k async for k in client.scan_iter(match=keys.base + "*", count=1000)]
        if doomed:
            await client.delete(*doomed)
        assert not await client.exists(tk.registered(keys))
    finally:
        await client.aclose()


async def _has_copy(url: str, keys: QueueKeys, tenant_id: str = "t") -> bool:
    """Whether the queue holds the copy of the tenant's quota."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        return bool(await client.hget(tk.tenant(keys, tenant_id), "on") == b"1")
    finally:
        await client.aclose()


async def test_sync_registers_again_the_queues_named_and_its_own(
    redis_url: str, prefix: str
) -> None:
    q = JobQueue("gq", redis=redis_url, prefix=prefix)
    plain = JobQueue("nt", redis=redis_url, prefix=prefix)  # no tenancy in this process
    async with TenantRegistry(redis=redis_url, prefix=prefix) as reg:
        try:
            TenantRegistry.enable(q)
            await reg.create_tenant({"tenant_id": "t"})
            await reg.attach(q)
            await _obliterate(redis_url, q.keys)
            assert await reg.queues() == []  # gone: out of the set
            await reg.sync()
            assert await reg.queues() == [] and not await _has_copy(redis_url, q.keys)

            with pytest.raises(ConfigurationError, match="queue name"):
                await reg.sync(queues=["gq", "a{b"])  # checked before any is registered
            assert await reg.queues() == []
            # None of its keys left and no worker: no queue (a mistyped name), refused.
            with pytest.raises(ConfigurationError, match="queue 'gq' not found"):
                await reg.sync(queues=["gq"])
            assert await reg.queues() == []
            used = JobQueue("gq", redis=redis_url, prefix=prefix)  # a job: it is there
            try:
                await used.add_job("x", {})
            finally:
                await used.close()
            assert await reg.sync(queues=["gq"]) == 1
            assert await reg.queues() == ["gq"] and await _has_copy(redis_url, q.keys)
            await q.add_job("x", {}, tenant_id="t")

            # The registry made from a queue registers it again by itself.
            await _obliterate(redis_url, q.keys)
            assert await reg.queues() == []
            own = TenantRegistry(q)
            assert await own.sync() == 1
            assert await reg.queues() == ["gq"] and await _has_copy(redis_url, q.keys)
            # ... but not a queue tenancy is not enabled on in this process.
            await TenantRegistry.for_queue(plain).sync()
            assert await reg.queues() == ["gq"]
        finally:
            await q.close()
            await plain.close()


async def test_a_long_running_producer_registers_a_gone_queue_again(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = JobQueue("pq", redis=redis_url, prefix=prefix)
    TenantRegistry.enable(q, sync_interval_s=0.2)
    async with TenantRegistry(redis=redis_url, prefix=prefix) as reg:
        try:
            await reg.create_tenant({"tenant_id": "t"})
            await q.add_job("x", {}, tenant_id="t")  # its first: registered
            await _obliterate(redis_url, q.keys)
            assert await reg.queues() == []
            await asyncio.sleep(0.3)  # the producer's check is due
            # Refused before (no quota copy left); the jobs added while the check
            # registers the queue again wait for it.
            await asyncio.gather(*(q.add_job("x", {}, tenant_id="t") for _ in range(10)))
            assert await reg.queues() == ["pq"] and await _has_copy(redis_url, q.keys)
            assert (await reg.get_tenant_usage("t")).queued == 10
        finally:
            await q.close()

    # Between checks the middleware costs nothing: one check per interval, not per job.
    runs: list[int] = []
    real = tn_install._AttachOnFirstUse._run

    async def counted(self: Any) -> None:
        runs.append(1)
        await real(self)

    monkeypatch.setattr(tn_install._AttachOnFirstUse, "_run", counted)
    q2 = JobQueue("pq2", redis=redis_url, prefix=prefix)
    TenantRegistry.enable(q2)
    try:
        await asyncio.gather(*(q2.add_job("x", {}, tenant_id="t") for _ in range(20)))
        await q2.add_jobs([("x", {}, {"tenant_id": "t"}) for _ in range(20)])
        assert len(runs) == 1
    finally:
        await q2.close()


def test_tenants_sync_cli_registers_the_app_queue_and_those_named(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.tenancy import TenantRegistry\n"
        f"queue = JobQueue('ct', redis={redis_url!r}, prefix={prefix!r})\n"
        "TenantRegistry.enable(queue)\n"
    )

    async def setup() -> None:
        q = JobQueue("ct", redis=redis_url, prefix=prefix)
        try:
            async with TenantRegistry(redis=redis_url, prefix=prefix) as reg:
                await reg.create_tenant({"tenant_id": "t"})
                await reg.attach(q)
                await _obliterate(redis_url, q.keys)
                assert await reg.queues() == []
            other = JobQueue("other", redis=redis_url, prefix=prefix)  # a queue, no tenancy
            try:
                await other.add_job("x", {})
            finally:
                await other.close()
        finally:
            await q.close()

    async def registered() -> list[str]:
        async with TenantRegistry(redis=redis_url, prefix=prefix) as reg:
            names = await reg.queues()
        return [n for n in names if await _has_copy(redis_url, QueueKeys(n, prefix))]

    asyncio.run(setup())
    with app_module(tmp_path, source, "kq_ro_sync") as module:
        out = CliRunner().invoke(
            cli_main, ["tenants", "sync", f"{module}:queue", "--queue", "other"]
        )
    assert out.exit_code == 0, out.output
    assert "2 quota copies written" in out.output, out.output
    assert asyncio.run(registered()) == ["ct", "other"]


# ------------------------------------------------------------------ docstrings
_REF = re.compile(r"``(install|roster|registry|lua|heal|keys|tk|model)\.([A-Za-z_]\w*)``")


def _defined(path: Path) -> set[str]:
    """The names a module defines at its top level (not those it imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text("utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_tenancy_docstrings_cite_where_things_are_defined() -> None:
    folder = SRC / "features" / "tenancy"
    wrong = [
        f"{path.name}: {mod}.{name}"
        for path in sorted(folder.glob("*.py"))
        for mod, name in _REF.findall(path.read_text("utf-8"))
        if name not in ("py", "lua")  # a file's name
        and name not in _defined(folder / f"{'keys' if mod == 'tk' else mod}.py")
    ]
    assert not wrong, wrong


# ------------------------------------------------------------------ extras in part
_PARTIAL: dict[str, tuple[dict[str, str], dict[str, Any], str]] = {
    "prometheus": (
        {"prometheus_client/__init__.py": ""},
        {"monitoring": {"enabled": True, "prometheus": True}},
        "advanced.monitoring needs the optional extra 'prometheus'",
    ),
    "encryption": (
        {"cryptography/__init__.py": ""},
        {"encryption": {"enabled": True, "keys": [{"key_id": "k1", "key": "0" * 64}]}},
        "advanced.encryption needs the optional extra 'encryption'",
    ),
    "webhooks": (
        {"httpx/__init__.py": ""},
        {"webhooks": {"enabled": True}},
        "advanced.webhooks needs the optional extra 'webhooks'",
    ),
    "zstd": (
        {"zstandard.py": ""},
        {"cost_optimization": {"enabled": True, "compression": {"algorithm": "zstd"}}},
        "advanced.cost_optimization needs the optional extra 'compression'",
    ),
}

_CONFIGURE = """
import sys
sys.path[:0] = {path!r}
from kitium_queue import ConfigurationError, JobQueue
try:
    JobQueue("partial", redis="memory://partial-extras",
             advanced={{"exactly_once": {{"enabled": True}}, **{config!r}}})
    print("configured")
except ConfigurationError as exc:
    print("refused:", exc)
# Refused before any section was installed (exactly_once comes first).
print("idempotency loaded:", "kitium_queue.features.idempotency.manager" in sys.modules)
"""


@pytest.mark.parametrize("case", sorted(_PARTIAL))
def test_an_extra_installed_in_part_is_refused_naming_it(tmp_path: Path, case: str) -> None:
    files, config, needle = _PARTIAL[case]
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    code = textwrap.dedent(_CONFIGURE.format(path=[str(tmp_path)], config=config))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert f"refused: {needle}" in done.stdout, done.stdout + done.stderr
    assert "not importable" in done.stdout and "pip install" in done.stdout, done.stdout
    assert "idempotency loaded: False" in done.stdout, done.stdout
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


_EXTRAS = [
    ("cryptography", "encryption"),
    ("httpx", "webhooks"),
    ("zstandard", "compression"),
    ("prometheus_client", "prometheus"),
]


def test_the_extras_check_imports_every_name_the_features_take() -> None:
    uses = switchboard._USES
    taken: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.name == "switchboard.py":
            continue
        text = path.read_text("utf-8")
        for mod, name in re.findall(r"\b(httpx|httpcore|zstandard)\.([A-Za-z_]\w*)", text):
            taken.setdefault(mod, set()).add(name)
        for mod, names in re.findall(r"from (cryptography[\w.]*) import ([\w, ]+)", text):
            taken.setdefault(mod, set()).update(n.strip() for n in names.split(","))
    listed = {mod: set(names) for per in uses.values() for mod, names in per.items()}
    missing = {mod: names - listed.get(mod, set()) for mod, names in taken.items()}
    assert not any(missing.values()), missing
    # Where the extras are installed, the check passes in a fresh interpreter (a name
    # that is a submodule not imported yet is imported, as ``from ... import`` does).
    code = (
        "from kitium_queue.features.advanced.switchboard import _require\n"
        f"for module, extra in {_EXTRAS!r}:\n"
        "    _require('section', module, extra)\n"
        "print('passed')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "passed", done.stdout + done.stderr
