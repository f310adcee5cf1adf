"""Redis ACL users made from ``redis_acl_rules`` (issue 17, item 2): a tenant's user
runs its own queues with an empty ``ACL LOG`` and Redis itself refuses it another
tenant's keys, whatever client it uses; the command lists cover every command the Lua
sources call; the access-control users can enforce (or administer) and no more."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from click.testing import CliRunner
from redis.exceptions import NoPermissionError, ResponseError

from _redis import RedisServer
from helpers import app_module
from kitium_queue import FIFOQueueManager, IdempotencyManager, JobChainManager, JobQueue
from kitium_queue.cli import main as cli_main
from kitium_queue.errors import ConfigurationError, PermissionDeniedError
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.access.redisacl import (
    ACCESS_ADMIN_COMMANDS,
    ACCESS_COMMANDS,
    ENGINE_COMMANDS,
    FEATURE_COMMANDS,
    redis_acl_rules,
)
from kitium_queue.scripts import SCRIPT_NAMES, ScriptRegistry

pytestmark = pytest.mark.redis_only

PASSWORD = f"kq-acl-{uuid.uuid4().hex}"
KEY = secrets.token_hex(32)
SRC = Path(__file__).resolve().parents[1] / "src" / "kitium_queue"
_CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'")


class Server:
    def __init__(self, srv: RedisServer, admin: redis_sync.Redis) -> None:
        self.srv, self.admin = srv, admin

    def url(self, user: str) -> str:
        return f"redis://{user}:{PASSWORD}@127.0.0.1:{self.srv.port}/0"

    def user(self, rules: Any) -> str:
        self.admin.execute_command("ACL", "SETUSER", *rules.setuser_args(PASSWORD))
        return str(rules.user)

    def denials(self) -> list[Any]:
        return [e for e in self.admin.acl_log() if e.get("object") != "client|setinfo"]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = RedisServer().start()
    try:
        admin = redis_sync.Redis(host="127.0.0.1", port=srv.port)
        yield Server(srv, admin)
        admin.close()
    finally:
        srv.close()


@pytest.fixture
def fresh(server: Server) -> Iterator[Server]:
    server.admin.flushall()
    server.admin.execute_command("ACL", "LOG", "RESET")
    yield server
    for user in server.admin.acl_users():
        if user != "default":
            server.admin.acl_deluser(user)


# ------------------------------------------------------------------ the lists
def _lua_of(folder: Path) -> set[str]:
    found: set[str] = set()
    for path in [*folder.glob("*.lua"), *folder.glob("*.py")]:
        found |= {c.lower() for c in _CALL.findall(path.read_text())}
    return found


def test_the_lists_cover_every_command_the_lua_sources_call() -> None:
    _replicas_src = (SRC / "features/replicas/acks.py").read_text()
    _footprint_src = (SRC / "features/footprint.py").read_text()
    registry = ScriptRegistry()
    core: set[str] = set()
    for name in SCRIPT_NAMES:
        core |= {c.lower() for c in _CALL.findall(registry.get(name).source)}
    assert {"hset", "zadd", "xadd"} <= core
    assert core - set(ENGINE_COMMANDS) == set()
    lua = SRC / "lua"
    leader = set().union(*(_lua_of_file(p) for p in lua.glob("leader_*.lua")))
    outbox = set().union(*(_lua_of_file(p) for p in lua.glob("outbox*.lua")))
    sources = {
        "flow-control": _lua_of_file(SRC / "features/flowcontrol.py"),
        "groups": _lua_of(SRC / "features/groups"),
        "idempotency": _lua_of(SRC / "features/idempotency"),
        "workflows": _lua_of(SRC / "features/workflows") | leader,
        "breakers": _lua_of(SRC / "features/breakers") | leader,
        "encryption": _lua_of(SRC / "features/encryption") | leader,
        "webhooks": _lua_of(SRC / "features/webhooks") | leader | outbox,
        # No Lua: the write barrier sends WAIT from Python after each write.
        "replicas": {c.lower() for c in re.findall(r'"(WAIT)"', _replicas_src)},
        "tenancy": _lua_of(SRC / "features/tenancy"),
        # The parked-set repair: its script, and the walks parking.py sends itself.
        "repairs": _lua_of_file(lua / "park_rebuild.lua") | {"scan", "zscan"},
        # No Lua: the memory report's own commands, as redis-py names them.
        "memory": {
            m.replace("_", "|")
            for m in re.findall(r"\b(?:client|pipe)\.(\w+)\(", _footprint_src)
            if m not in ("pipeline", "execute")
        },
    }  # fmt: skip
    assert set(sources) == set(FEATURE_COMMANDS)
    for feature, used in sources.items():
        # A subcommand rule (xgroup|delconsumer) covers the command the Lua names.
        listed = {*ENGINE_COMMANDS, *FEATURE_COMMANDS[feature]}
        listed |= {c.split("|")[0] for c in listed}
        missing = used - listed
        assert not missing, f"{feature} calls {sorted(missing)}: add them to FEATURE_COMMANDS"
    append = resources.files("kitium_queue.features.audit").joinpath("append.lua").read_text()
    used = {c.lower() for c in _CALL.findall(append)}
    assert used - set(ACCESS_COMMANDS) - set(ACCESS_ADMIN_COMMANDS) == set()


def _lua_of_file(path: Path) -> set[str]:
    return {c.lower() for c in _CALL.findall(path.read_text())}


@pytest.mark.parametrize(
    ("queues", "needle"),
    [
        (["a*b"], "literal prefix followed by one trailing"),
        (["a?"], "literal prefix followed by one trailing"),
        (["*"], "every queue's keys"),
        (["a{b"], "invalid queue pattern"),
        ([], "name at least one queue"),
    ],
)
def test_rules_refuse_what_would_widen_the_key_pattern(queues: list[str], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(needle)):
        redis_acl_rules("u", queues)


def test_rules_of_names_and_prefixes() -> None:
    r = redis_acl_rules("tenant-a", ["acme-orders", "acme-*", "acme-orders"], prefix="app")
    assert r.keys == ("~app:{acme-orders}:*", "~app:{acme-*")
    assert r.channels == ("app:{acme-orders}:*", "app:{acme-*")
    rules = r.rules()
    assert rules[rules.index("-@all") + 1 :] == [f"+{c}" for c in ENGINE_COMMANDS]
    assert "+info" not in redis_acl_rules("u", ["q"], info=False).rules()
    assert "+client|setinfo" in redis_acl_rules("u", ["q"], setinfo=True).rules()
    assert r.command().startswith("ACL SETUSER tenant-a reset on ><PASSWORD> ~app:{acme-orders}:*")
    assert r.acl_file_line("pw").startswith("user tenant-a reset on #")
    with pytest.raises(ConfigurationError, match="unknown feature"):
        redis_acl_rules("u", ["q"], features=["teleport"])
    with pytest.raises(ConfigurationError, match="Redis user name"):
        redis_acl_rules("u ser", ["q"])
    with pytest.raises(ConfigurationError, match="not one str"):
        redis_acl_rules("u", "q")  # type: ignore[arg-type]


# ------------------------------------------------------------------ real users
async def _run_queue(url: str, name: str) -> list[str]:
    q = JobQueue(name, redis=url, settings={"max_stalled_interval": 200})
    done: list[str] = []
    finished = asyncio.Event()

    @q.process("work")
    async def work(job: Any) -> dict[str, Any]:
        await job.update_progress(50)
        await job.log("working")
        done.append(job.id)
        if len(done) == 5:
            finished.set()
        return {"ok": job.data["i"]}

    try:
        ids = [await q.add_job("work", {"i": i}) for i in range(3)]
        ids += await q.add_jobs([("work", {"i": 3}, {}), ("work", {"i": 4}, {"delay": 20})])
        await q.schedule_every("tick", {"i": -1}, 3_600_000)
        await q.start()
        await asyncio.wait_for(finished.wait(), 10)
        await q.worker.stop(timeout_ms=1000)
        assert (await q.get_job_status(ids[0])).result == {"ok": 0}  # type: ignore[union-attr]
        await q.get_job_detail(ids[0])
        await q.explain(ids[0])
        assert await q.get_job_logs(ids[0]) == ["working"]
        page = await q.list_jobs("completed", limit=2)
        await q.list_jobs("completed", limit=2, cursor=page.next_cursor)
        await q.get_jobs_by_status("pending")
        assert (await q.get_stats()).completed == 5
        async for _ in q.events(last_id="0", follow=False, block_ms=10):
            pass
        await q.pause()
        await q.resume()
        await q.bulk_retry("completed", 1)
        await q.drain()
        await q.remove_schedule("tick@every")
        await q.clear(force=True)
    finally:
        await q.close()
    return ids


async def test_a_tenant_user_runs_its_queue_and_redis_refuses_it_other_tenants_keys(
    fresh: Server,
) -> None:
    admin_url = f"redis://127.0.0.1:{fresh.srv.port}/0"
    other = JobQueue("globex-orders", redis=admin_url)
    globex_id = await other.add_job("work", {"card": "4111"})
    await other.close()
    tenant = fresh.user(redis_acl_rules("tenant-acme", ["acme-*"]))
    fresh.admin.execute_command("ACL", "LOG", "RESET")

    await _run_queue(fresh.url(tenant), "acme-orders")
    await _run_queue(fresh.url(tenant), "acme-billing")
    assert fresh.denials() == []  # everything the engine sent was allowed

    # Any client, any command: Redis refuses the other tenant's keys.
    raw = aioredis.Redis.from_url(fresh.url(tenant))
    globex = f"kq:{{globex-orders}}:job:{globex_id}"
    try:
        for call in (
            raw.hgetall(globex),
            raw.hset(globex, "d", "stolen"),
            raw.delete("kq:{globex-orders}:wait"),
            raw.zrange("kq:{globex-orders}:wait", 0, -1),
            raw.xadd("kq:{globex-orders}:events", {"e": "forged"}),
            raw.eval("return redis.call('HGETALL', KEYS[1])", 1, globex),
            raw.eval("return redis.call('HGETALL', 'kq:{globex-orders}:meta')", 0),
            raw.xadd("kq:{!access}:audit", {"forged": "1"}),
            raw.hgetall("kq:{!access}:grants:alice"),
        ):
            with pytest.raises((NoPermissionError, ResponseError)) as info:
                await call
            assert re.search(r"NOPERM|no permissions|can't access", str(info.value)), info.value
    finally:
        await raw.aclose()
    # Through the library: the clear error of a refused user.
    stolen = JobQueue("globex-orders", redis=fresh.url(tenant))
    try:
        with pytest.raises(PermissionDeniedError, match="lack of permission"):
            await stolen.add_job("work", {})
        # Reads that are plain commands (not scripts) surface redis-py's own error.
        with pytest.raises((PermissionDeniedError, NoPermissionError)):
            await stolen.get_job_status(globex_id)
    finally:
        await stolen.close()
    assert fresh.admin.hget(globex, "d") is not None
    assert fresh.admin.zcard("kq:{globex-orders}:wait") == 1


async def test_a_literal_queue_name_grants_that_queue_only(fresh: Server) -> None:
    user = fresh.user(redis_acl_rules("just-t", ["t"]))
    fresh.admin.hset("kq:{tax-refunds}:meta", "x", "1")
    raw = aioredis.Redis.from_url(fresh.url(user))
    try:
        await raw.hset("kq:{t}:meta", "x", "1")
        with pytest.raises(NoPermissionError):
            await raw.hget("kq:{tax-refunds}:meta", "x")
    finally:
        await raw.aclose()


async def test_feature_users_run_their_features_with_an_empty_acl_log(fresh: Server) -> None:
    rules = redis_acl_rules(
        "tenant-f", ["feat-*"], features=["groups", "flow-control", "idempotency", "workflows"]
    )
    url = fresh.url(fresh.user(rules))
    fresh.admin.execute_command("ACL", "LOG", "RESET")
    q = JobQueue("feat-1", redis=url)
    fifo = FIFOQueueManager(q)
    IdempotencyManager(q)
    chains = JobChainManager(q)
    q.set_concurrency_limit("tenant:*", 1)
    q.set_rate_limit("customer:*", max=100, duration=1000)
    seen: list[str] = []

    @q.process("step")
    async def step(job: Any) -> int:
        seen.append(job.id)
        return 1

    try:
        for i in range(3):
            await q.add_job("step", {}, message_group_id=f"g{i % 2}")
            await q.add_job("step", {}, concurrency_key="tenant:1", rate_limit_key="customer:1")
        await q.add_job("step", {}, idempotency_key="k1", delivery_guarantee="exactly-once")
        await fifo.pause_group("g1")
        await fifo.resume_group("g1")
        await fifo.get_group_stats("g0")
        from kitium_queue import WorkflowStep

        await chains.execute_workflow(
            "wf", [WorkflowStep("a", "step", {}), WorkflowStep("b", "step", {}, depends_on=["a"])]
        )
        await q.start()
        for _ in range(500):
            if len(seen) >= 9:
                break
            await asyncio.sleep(0.01)
        assert len(seen) == 9
        await chains.get_workflow_status("wf")
        await q.worker.stop(timeout_ms=1000)
        await q.clear(force=True)
    finally:
        await q.close()
    assert fresh.denials() == []


async def test_access_users_enforce_or_administer_and_no_more(fresh: Server) -> None:
    admin_user = fresh.user(redis_acl_rules("acl-admin", [], access="admin"))
    app_user = fresh.user(redis_acl_rules("app", ["acme-orders"], access="enforce"))
    fresh.admin.execute_command("ACL", "LOG", "RESET")
    boss = AccessControlManager(fresh.url(admin_user), audit_key=KEY)
    app = AccessControlManager(fresh.url(app_user), audit_key=KEY)
    q = JobQueue("acme-orders", redis=fresh.url(app_user), principal="alice")
    try:
        await boss.grant_access(principal_id="alice", queue_pattern="acme-*", role="viewer")
        app.protect(q)
        await q.get_stats()
        with pytest.raises(PermissionDeniedError, match="was refused add_job"):
            await q.add_job("j", {})  # refused in-process, audited through this user
        assert fresh.denials() == []
        with pytest.raises(PermissionDeniedError, match="lack of permission"):
            await app.grant_access(principal_id="alice", queue_pattern="*", role="admin")
        raw = aioredis.Redis.from_url(fresh.url(app_user))
        try:
            with pytest.raises(NoPermissionError):
                await raw.hset("kq:{!access}:grants:alice", "*", "{}")
        finally:
            await raw.aclose()
        fresh.admin.execute_command("ACL", "LOG", "RESET")
        assert await boss.audit.trim(max_entries=1) == 2  # grant + refusal
        report = await boss.verify_audit_log()
        assert report.ok, report.problems
        assert fresh.denials() == []
    finally:
        await q.close()
        await app.close()
        await boss.close()


async def test_the_admin_user_manages_tenants_and_the_enforce_user_cannot(
    fresh: Server,
) -> None:
    """Tenant changes through AccessControlManager (registry compare-and-set with its
    audit entry) run as the ``admin`` user with an empty ACL log; an ``enforce`` user is
    refused by Redis even for a principal its grants would allow."""
    admin_user = fresh.user(redis_acl_rules("acl-admin", [], access="admin"))
    app_user = fresh.user(redis_acl_rules("app", ["acme-orders"], access="enforce"))
    fresh.admin.execute_command("ACL", "LOG", "RESET")
    boss = AccessControlManager(fresh.url(admin_user), audit_key=KEY, principal="root")
    app = AccessControlManager(fresh.url(app_user), audit_key=KEY, principal="root")
    try:
        await boss.grant_access(principal_id="root", queue_pattern="*", role="admin")
        await boss.create_tenant({"tenantId": "acme", "quota": {"maxQueueSize": 10}})
        await boss.update_tenant("acme", quota={"maxConcurrency": 2})
        assert (await boss.get_tenant_quota("acme")).max_concurrency == 2
        assert await boss.remove_tenant("acme") is True
        assert fresh.denials() == []
        with pytest.raises(PermissionDeniedError, match="lack of permission"):
            await app.create_tenant({"tenant_id": "globex"})
        assert fresh.admin.hget("kq:{!access}:tenants", "globex") is None
        assert (await boss.verify_audit_log()).ok
    finally:
        await app.close()
        await boss.close()


async def test_the_parked_set_repair_runs_with_the_repairs_feature_and_no_more(
    fresh: Server,
) -> None:
    from kitium_queue.parking import parked_count, rebuild_parked

    admin_url = f"redis://127.0.0.1:{fresh.srv.port}/0"
    ops = JobQueue("fix-1", redis=admin_url)
    ops.set_concurrency_limit("k", 1)
    seen: list[str] = []

    @ops.process("n")
    async def hold(job: Any) -> None:
        seen.append(job.id)
        await asyncio.sleep(30)

    for _ in range(3):
        await ops.add_job("n", {}, concurrency_key="k")
    # One runs (and holds the key); the claim parks the other two behind the key.
    await ops.start(concurrency=3)
    for _ in range(500):
        if seen and await parked_count(ops) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(seen) == 1 and await parked_count(ops) == 2
    await ops.worker.stop(timeout_ms=100)  # hands its job back: the key frees one
    stranded = await parked_count(ops)
    assert stranded >= 1
    await ops.close()
    # Their set is lost (deleted by hand): only the repair brings them back.
    raw = redis_sync.Redis(host="127.0.0.1", port=fresh.srv.port)
    sets = [k for k in raw.keys("kq:{fix-1}:parked:*") if raw.type(k) == b"zset"]
    assert sets
    raw.delete(*sets)
    raw.close()

    bare = fresh.user(redis_acl_rules("op-bare", ["fix-*"], features=["flow-control"]))
    fixer = fresh.user(redis_acl_rules("op-fix", ["fix-*"], features=["flow-control", "repairs"]))
    fresh.admin.execute_command("ACL", "LOG", "RESET")
    refused = JobQueue("fix-1", redis=fresh.url(bare))
    try:
        with pytest.raises((NoPermissionError, ResponseError)):
            await rebuild_parked(refused, dry_run=True)
    finally:
        await refused.close()
    assert fresh.denials()  # Redis said no to the user without the repairs commands
    fresh.admin.execute_command("ACL", "LOG", "RESET")
    fix = JobQueue("fix-1", redis=fresh.url(fixer))
    try:
        result = await rebuild_parked(fix)
        assert result.restored == stranded and result.released == stranded
    finally:
        await fix.close()
    assert fresh.denials() == []


async def test_the_memory_report_runs_with_the_memory_feature_and_no_more(
    fresh: Server, tmp_path: Path
) -> None:
    from kitium_queue.features.footprint import measure_footprint

    admin_url = f"redis://127.0.0.1:{fresh.srv.port}/0"
    ops = JobQueue("mem-1", redis=admin_url)
    await ops.add_jobs([("n", {"i": i}, {}) for i in range(20)])
    await ops.close()
    bare = fresh.user(redis_acl_rules("mem-bare", ["mem-*"]))
    full = fresh.user(redis_acl_rules("mem-ops", ["mem-*"], features=["memory"]))
    fresh.admin.execute_command("ACL", "LOG", "RESET")
    refused = JobQueue("mem-1", redis=fresh.url(bare))
    try:
        with pytest.raises((NoPermissionError, PermissionDeniedError)):
            await measure_footprint(refused, samples=5)
    finally:
        await refused.close()
    assert fresh.denials()  # Redis said no to the user without the memory commands
    # The CLI says what is missing and how to get it, not "unexpected error".
    code, text = await _cli(tmp_path, fresh.url(bare), "mem-1", ["memory"])
    assert code == 1 and "unexpected" not in text, text
    assert "lack of permission" in text and "--feature" in text and PASSWORD not in text
    fresh.admin.execute_command("ACL", "LOG", "RESET")
    q = JobQueue("mem-1", redis=fresh.url(full))
    try:
        report = await measure_footprint(q, samples=5)
        waiting = next(s for s in report.states if s.state == "waiting")
        assert (waiting.jobs, waiting.sampled) == (20, 5) and waiting.sampled_bytes > 0
        assert report.problems == []
    finally:
        await q.close()
    assert fresh.denials() == []


async def _cli(tmp_path: Path, url: str, name: str, args: list[str]) -> tuple[int, str]:
    source = f"from kitium_queue import JobQueue\nqueue = JobQueue({name!r}, redis={url!r})\n"
    with app_module(tmp_path, source, "kq_acl") as module:
        got = await asyncio.to_thread(
            CliRunner().invoke, cli_main, [args[0], f"{module}:queue", *args[1:]]
        )
    return got.exit_code, got.output


async def test_a_read_the_acl_refuses_is_a_clear_403_on_the_dashboard(fresh: Server) -> None:
    """A job page reads with plain commands; one the user's ACL lacks (here ``ZRANK``,
    which ``explain`` sends) was an HTTP 500 with a traceback. It is a 403 saying what
    the user lacks and how to get it."""
    import httpx

    from kitium_queue.dashboard import create_dashboard

    rules = redis_acl_rules("dash-nozrank", ["dash-*"])
    fresh.admin.execute_command("ACL", "SETUSER", *rules.setuser_args(PASSWORD), "-zrank")
    q = JobQueue("dash-1", redis=fresh.url(str(rules.user)))
    try:
        jid = await q.add_job("n", {})
        token = "ad-" + "a" * 29
        app = create_dashboard(queues=[q], tokens=[f"{token}:ann@example.com:admin"])
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as c:
            r = await c.post("/login", data={"token": token, "next": "/"})
            assert r.status_code == 303, r.text
            r = await c.get(f"/q/dash-1/jobs/{jid}")
        assert r.status_code == 403, r.text[:300]
        assert "lack of permission" in r.text and "zrank" in r.text and PASSWORD not in r.text
    finally:
        await q.close()
