"""The dashboard's Server page (``dashboard/views_server.py``, ``/q/<queue>/server``),
through the ASGI app against the real Redis: it shows what ``kitium-queue health``,
``memory``, ``replicas`` and ``config show`` print (compared value by value), flags an
evicting ``maxmemory-policy`` and too few replicas, degrades section by section (an
ACL user without ``+info``, a damaged key, memory://) with a 200, never shows a secret
(a password in the Redis URL, encryption keys, webhook secrets), measures memory only
when asked and within bounds, lets a viewer read, refuses a request without a session,
and passes the queue's read guards as ``server_status``."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from _redis import RedisServer
from helpers import SAVING_SERVER_ARGS, app_module, fail_saves, mend_saves, wait_replica_online
from kitium_queue import JobQueue, PermissionDeniedError, ReplicaAcks
from kitium_queue.cli import main
from kitium_queue.dashboard import create_dashboard
from kitium_queue.dashboard.views_server import MAX_MEMORY_SAMPLES
from kitium_queue.features.access.model import Permission, read_permission
from kitium_queue.features.advanced.cli import flatten
from kitium_queue.features.encryption import generate_key
from kitium_queue.guards import ReadCall
from test_dashboard_asgi import TOKENS, VIEWER, client_for, signed_in

pytestmark = pytest.mark.redis_only

PASSWORD = "pw-" + uuid.uuid4().hex
KEY = generate_key()
WEBHOOK_SECRET = "whsec-" + uuid.uuid4().hex

#: The queue the CLI loads and the dashboard shows (built twice: each its own object).
SOURCE = """\
from kitium_queue import JobQueue
from kitium_queue.features.encryption import KeyConfig

def build():
    return JobQueue('srv', redis={url!r}, prefix={prefix!r}, advanced={{
        'compliance': {{'enabled': True}},
        'encryption': {{'enabled': True, 'rotation': False,
                        'keys': [KeyConfig('k1', {key!r})], 'current_key_id': 'k1'}},
        'webhooks': {{'enabled': True, 'run_service': False,
                      'secrets': {{'ep1': {secret!r}}}}},
    }})

queue = build()
"""


def build(url: str, prefix: str) -> JobQueue:
    ns: dict[str, Any] = {}
    exec(SOURCE.format(url=url, prefix=prefix, key=KEY, secret=WEBHOOK_SECRET), ns)
    q: JobQueue = ns["build"]()
    return q


@pytest.fixture
def app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = SOURCE.format(url=redis_url, prefix=prefix, key=KEY, secret=WEBHOOK_SECRET)
    with app_module(tmp_path, source, "kq_dash_server") as module:
        yield f"{module}:queue"


async def cli(*args: str) -> tuple[int, str]:
    """Run ``kitium-queue`` (its own event loop, in a thread): exit code and stdout."""
    out = await asyncio.to_thread(CliRunner().invoke, main, list(args))
    assert out.exception is None or isinstance(out.exception, SystemExit), out.output
    return out.exit_code, out.stdout


def dd(html: str, ident: str) -> str:
    """The text of the element with id ``ident`` (tags dropped, unescaped)."""
    m = re.search(rf'id="{ident}"[^>]*>(.*?)</(?:dd|p)>', html, re.S)
    assert m, f"no #{ident} on the page"
    return unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip()


def checks_of(html: str) -> list[dict[str, Any]]:
    out = []
    for m in re.finditer(
        r'<tr data-check="([^"]*)" data-ok="([01])">.*?<td[^>]*>(.*?)</td></tr>', html, re.S
    ):
        detail = re.findall(r"<td[^>]*>(.*?)</td>", m.group(0), re.S)[-1]
        out.append(
            {"name": unescape(m.group(1)), "ok": m.group(2) == "1", "detail": unescape(detail)}
        )
    return out


def attrs(html: str, row: str, *names: str) -> dict[str, tuple[str, ...]]:
    """``data-<row>`` -> its ``data-<name>`` values, for every such row."""
    out = {}
    for m in re.finditer(rf"<tr data-{row}=\"([^\"]*)\"([^>]*)>", html):
        found = tuple(re.search(rf'data-{n}="([^"]*)"', m.group(2)).group(1) for n in names)  # type: ignore[union-attr]
        out[unescape(m.group(1))] = found
    return out


def settings_of(html: str) -> dict[str, str]:
    rows = re.findall(
        r'<tr data-setting="([^"]*)"><td><code>.*?</code></td><td><code>(.*?)</code></td></tr>',
        html,
        re.S,
    )
    return {unescape(k): unescape(v) for k, v in rows}


# ---------------------------------------------------------------------------- the CLI's views
async def test_the_page_shows_what_the_cli_shows(app: str, redis_url: str, prefix: str) -> None:
    q = build(redis_url, prefix)
    try:
        await q.add_jobs([("n", {"pad": "x" * 500}, {}) for _ in range(7)])
        await q.add_jobs([("n", {"pad": "y" * 50}, {"delay": 600_000}) for _ in range(3)])
        dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        c = await signed_in(dash, VIEWER)
        assert 'href="/q/srv/server"' in (await c.get("/q/srv")).text  # the tab, every queue
        r = await c.get("/q/srv/server")
        assert r.status_code == 200, r.text
        page = r.text
        assert 'id="memory-states"' not in page  # memory is measured only when asked

        # health --json (readiness): verdict, exit code, backend, memory, checks.
        code, out = await cli("health", app, "--json")
        health = json.loads(out)
        assert code == 0 and health["verdict"] == "ready"
        assert dd(page, "verdict").startswith("ready") and 'data-exit="0"' in page
        assert dd(page, "backend") == health["backend"]
        mem = health["memory"]
        assert re.search(rf'data-max="{mem["maxmemory_bytes"]}"', page)
        assert f'data-policy="{mem["maxmemory_policy"]}"' in page
        assert dd(page, "persistence") == mem["persistence"]
        assert dd(page, "missing") == str(health["missing_records"])
        assert 'id="policy-warning"' not in page
        assert checks_of(page) == health["checks"]
        assert [c["name"] for c in health["checks"]] == [
            "queue readable", "memory", "eviction policy", "primary",
        ]  # fmt: skip

        # replicas --json: role and replicas (none on the test server: exit 1).
        code, out = await cli("replicas", app, "--json")
        st = json.loads(out)
        assert code == 1 and st["role"] == "master"
        assert dd(page, "repl-role") == st["role"] == dd(page, "role")
        assert dd(page, "connected-replicas") == str(st["connected_replicas"]) == "0"
        assert dd(page, "replica-acks").startswith("off")

        # memory --json, on demand: the same states, counts, samples and estimates.
        r = await c.get("/q/srv/server?memory=1&samples=50")
        assert r.status_code == 200, r.text
        code, out = await cli("memory", app, "--json", "--samples", "50")
        fp = json.loads(out)
        states = attrs(r.text, "state", "jobs", "sampled", "estimated")
        assert states == {
            s["state"]: (str(s["jobs"]), str(s["sampled"]), str(s["estimated_bytes"]))
            for s in fp["states"]
        }
        assert states["waiting"][:2] == ("7", "7") and states["delayed"][:2] == ("3", "3")
        structures = attrs(r.text, "structure", "bytes")
        assert set(structures) == set(fp["structures"]) and "events" in structures
        assert structures["wait"] == (str(fp["structures"]["wait"]),)

        # config show --json: every setting the page lists is the CLI's.
        code, out = await cli("config", "show", app, "--json")
        cfg = dict(flatten(json.loads(out)))
        shown = settings_of(page)
        assert len(shown) > 50 and shown["core.prefix"] == prefix
        for path, text in shown.items():
            want = cfg[path] if isinstance(cfg[path], str) else json.dumps(cfg[path], default=str)
            assert text == want, path
        assert shown["sections.encryption.key_ids"] == '["k1"]'
        assert (
            dd(page, "redis-version")
            == redis.Redis.from_url(redis_url).info("server")["redis_version"]
        )
        for text in (page, r.text):
            assert KEY not in text and WEBHOOK_SECRET not in text
    finally:
        await q.clear(force=True)
        await q.close()


async def test_memory_samples_are_bounded_reused_and_guarded(redis_url: str, prefix: str) -> None:
    q = JobQueue("mq", redis=redis_url, prefix=prefix)
    seen: list[ReadCall] = []
    q.queries.add_guard(seen.append)
    try:
        await q.add_jobs([("n", {"i": i}, {}) for i in range(MAX_MEMORY_SAMPLES + 30)])
        dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        c = await signed_in(dash, VIEWER)
        r = await c.get("/q/mq/server?memory=1&samples=999999")
        assert r.status_code == 200, r.text
        waiting = attrs(r.text, "state", "jobs", "sampled")["waiting"]
        assert waiting == (str(MAX_MEMORY_SAMPLES + 30), str(MAX_MEMORY_SAMPLES))
        footprints = [x for x in seen if x.query == "measure_footprint"]
        assert [x.args["samples"] for x in footprints] == [MAX_MEMORY_SAMPLES]
        assert footprints[0].principal == "vera@example.com"
        # Asked again at once: the result is reused (the read guards still pass).
        await q.add_job("n", {})
        again = await c.get(f"/q/mq/server?memory=1&samples={MAX_MEMORY_SAMPLES}")
        assert 'id="memory-age"' in again.text
        assert attrs(again.text, "state", "jobs")["waiting"] == (str(MAX_MEMORY_SAMPLES + 30),)
        assert len([x for x in seen if x.query == "measure_footprint"]) == 2
        # Another sample size measures anew.
        fresh = await c.get("/q/mq/server?memory=1&samples=5")
        assert attrs(fresh.text, "state", "jobs", "sampled")["waiting"] == (
            str(MAX_MEMORY_SAMPLES + 31),
            "5",
        )
    finally:
        await q.clear(force=True)
        await q.close()


# ---------------------------------------------------------------------------- flagged servers
@pytest.fixture(scope="module")
def evicting() -> Iterator[RedisServer]:
    srv = RedisServer("--maxmemory", "512mb").start()
    try:
        yield srv
    finally:
        srv.close()


async def test_an_evicting_policy_is_flagged(
    evicting: RedisServer, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    admin = redis.Redis(port=evicting.port)
    admin.config_set("maxmemory-policy", "noeviction")
    known = JobQueue("ev", redis=evicting.url)  # connected while the policy was safe
    fresh = JobQueue("ev", redis=evicting.url)
    # The dashboard records signed-out sessions under its first queue by name: a sound
    # one (see test_a_first_queue_that_refuses_the_server_fails_no_page).
    sound = JobQueue("a-sound", redis=redis_url, prefix=prefix)
    try:
        await known.add_job("n", {})
        admin.config_set("maxmemory-policy", "allkeys-lru")
        dash = create_dashboard(queues=[known], tokens=TOKENS, refresh_ms=0)
        page = (await (await signed_in(dash, VIEWER)).get("/q/ev/server")).text
        assert 'data-policy="allkeys-lru"' in page and 'id="policy-warning"' in page
        assert dd(page, "verdict").startswith("not ready") and 'data-exit="4"' in page
        by = {c["name"]: c for c in checks_of(page)}
        assert not by["eviction policy"]["ok"]
        assert (
            by["eviction policy"]["detail"] == "maxmemory-policy allkeys-lru may evict job records"
        )
        assert by["memory"]["ok"] and "of maxmemory used (limit 95%)" in by["memory"]["detail"]
        assert re.search(rf'data-max="{512 * 1024 * 1024}"', page)

        # A queue that connects now refuses the server, as the CLI's does: exit 4.
        dash = create_dashboard(queues=[sound, fresh], tokens=TOKENS, refresh_ms=0)
        r = await (await signed_in(dash, VIEWER)).get("/q/ev/server")
        assert r.status_code == 200, r.text
        source = (
            f"from kitium_queue import JobQueue\nqueue = JobQueue('ev', redis={evicting.url!r})\n"
        )
        with app_module(tmp_path, source, "kq_dash_evict") as module:
            code, out = await cli("health", f"{module}:queue", "--json")
        health = json.loads(out)
        assert code == 4 and health["verdict"] == "not ready"
        assert checks_of(r.text) == health["checks"]
        assert health["checks"][0]["name"] == "configuration"
        assert "allkeys-lru" in health["checks"][0]["detail"]
        assert 'data-exit="4"' in r.text
        # The sections that need the connection say why; the configuration renders.
        assert "allkeys-lru" in dd(r.text, "replicas-error")
        assert 'data-setting="core.prefix"' in r.text
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.flushall()
        admin.close()
        await known.close()
        await fresh.close()
        await sound.close()


async def test_a_server_that_cannot_save_is_shown_answering_and_refusing_writes(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """MISCONF refuses PING too: the page still reads the server, says writes are
    refused and agrees with ``kitium-queue health`` (exit 4, not 3)."""
    with RedisServer(*SAVING_SERVER_ARGS) as srv:
        sound = JobQueue("a-sound", redis=redis_url, prefix=prefix)
        q = JobQueue("ns", redis=srv.url)
        try:
            await q.add_job("n", {})
            await asyncio.to_thread(fail_saves, srv.port)
            dash = create_dashboard(queues=[sound, q], tokens=TOKENS, refresh_ms=0)
            r = await (await signed_in(dash, VIEWER)).get("/q/ns/server")
            assert r.status_code == 200 and 'data-exit="4"' in r.text
            assert dd(r.text, "verdict").startswith("not ready")
            by = {c["name"]: c for c in checks_of(r.text)}
            assert not by["writes"]["ok"] and "background save failed" in by["writes"]["detail"]
            assert by["queue readable"]["ok"]  # reads go on
            source = (
                f"from kitium_queue import JobQueue\nqueue = JobQueue('ns', redis={srv.url!r})\n"
            )
            with app_module(tmp_path, source, "kq_dash_nosave") as module:
                code, out = await cli("health", f"{module}:queue", "--json")
            health = json.loads(out)
            assert code == 4
            assert [(c["name"], c["ok"]) for c in checks_of(r.text)] == [
                (c["name"], c["ok"]) for c in health["checks"]
            ]
            await asyncio.to_thread(mend_saves, srv.port, tmp_path)
            r = await (await signed_in(dash, VIEWER)).get("/q/ns/server")
            assert 'data-exit="0"' in r.text
        finally:
            await q.close()
            await sound.close()


async def test_too_few_replicas_and_a_busy_server_are_shown_as_the_cli_says(
    tmp_path: Path,
) -> None:
    """NOREPLICAS (reads go on) and BUSY (every command refused, another client's
    script running long): the page and ``kitium-queue health`` agree, exit 4."""
    with RedisServer("--busy-reply-threshold", "100") as srv:
        admin = redis.Redis(port=srv.port)
        q = JobQueue("rf", redis=srv.url)
        source = f"from kitium_queue import JobQueue\nqueue = JobQueue('rf', redis={srv.url!r})\n"
        try:
            await q.add_job("n", {})
            dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)

            async def agree(module: str) -> dict[str, dict[str, Any]]:
                r = await (await signed_in(dash, VIEWER)).get("/q/rf/server")
                assert r.status_code == 200 and 'data-exit="4"' in r.text
                code, out = await cli("health", f"{module}:queue", "--json")
                assert code == 4
                page = [(c["name"], c["ok"]) for c in checks_of(r.text)]
                assert page == [(c["name"], c["ok"]) for c in json.loads(out)["checks"]]
                return {c["name"]: c for c in checks_of(r.text)}

            with app_module(tmp_path, source, "kq_dash_refusals") as module:
                admin.config_set("min-replicas-to-write", 1)
                by = await agree(module)
                assert not by["writes"]["ok"] and "fewer replicas" in by["writes"]["detail"]
                assert by["queue readable"]["ok"]  # reads go on
                admin.config_set("min-replicas-to-write", 0)

                script = (
                    "local t = redis.call('TIME')[1] while redis.call('TIME')[1] - t < 60 do end"
                )
                runner = asyncio.create_task(
                    asyncio.to_thread(_eval_until_killed, srv.port, script)
                )
                try:
                    await asyncio.sleep(0.5)
                    by = await agree(module)
                    assert not by["writes"]["ok"] and "reads too" in by["writes"]["detail"]
                    assert not by["queue readable"]["ok"]
                finally:
                    admin.execute_command("SCRIPT", "KILL")
                    await runner
            r = await (await signed_in(dash, VIEWER)).get("/q/rf/server")
            assert 'data-exit="0"' in r.text
        finally:
            await q.close()
            admin.close()


def _eval_until_killed(port: int, script: str) -> None:
    c = redis.Redis(port=port)
    try:
        c.eval(script, 0)
    except redis.ResponseError as exc:
        assert "killed" in str(exc).lower()
    finally:
        c.close()


async def test_a_first_queue_that_refuses_the_server_fails_no_page(
    evicting: RedisServer,
) -> None:
    admin = redis.Redis(port=evicting.port)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    q = JobQueue("ev", redis=evicting.url)
    try:
        dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        r = await (await signed_in(dash, VIEWER)).get("/q/ev/server")
        assert r.status_code == 200 and 'data-exit="4"' in r.text
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()
        await q.close()


async def test_too_few_replicas_for_the_wait_setting_is_flagged(tmp_path: Path) -> None:
    # The primary serves the replica's full sync at once (Redis waits 5 s by default).
    primary = RedisServer("--repl-diskless-sync-delay", "0").start()
    replica = RedisServer(
        "--replicaof", "127.0.0.1", str(primary.port), "--repl-diskless-sync-delay", "0"
    ).start()
    q = JobQueue("ra", redis=primary.url)
    try:
        await asyncio.to_thread(wait_replica_online, primary.port, replica.port)
        ReplicaAcks(q, replicas=2, timeout_ms=300, outcomes=False)
        dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        page = (await (await signed_in(dash, VIEWER)).get("/q/ra/server")).text
        source = (
            f"from kitium_queue import JobQueue\nqueue = JobQueue('ra', redis={primary.url!r})\n"
        )
        with app_module(tmp_path, source, "kq_dash_repl") as module:
            code, out = await cli("replicas", f"{module}:queue", "--json")
        st = json.loads(out)
        assert code == 0 and st["connected_replicas"] == 1
        assert dd(page, "connected-replicas") == "1"
        rows = attrs(page, "replica")
        assert set(rows) == {r["address"] for r in st["replicas"]} == {f"127.0.0.1:{replica.port}"}
        assert "online" in page
        acks = dd(page, "replica-acks")
        assert acks.startswith("2 replica(s), timeout 300 ms, outcomes not")
        assert 'id="replicas-short"' in page
    finally:
        await q.close()
        replica.close()
        primary.close()


# ---------------------------------------------------------------------------- degraded sections
@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    admin = redis.Redis(port=srv.port)
    admin.execute_command(
        "ACL", "SETUSER", "noinfo", "reset", "on", f">{PASSWORD}", "~*", "&*", "+@all", "-info"
    )
    admin.close()
    try:
        yield srv
    finally:
        srv.close()


async def test_info_refused_renders_the_other_sections_and_no_password(
    acl_server: RedisServer,
) -> None:
    url = f"redis://noinfo:{PASSWORD}@127.0.0.1:{acl_server.port}/0"
    q = JobQueue("acl", redis=url)
    try:
        await q.add_jobs([("n", {}, {}) for _ in range(4)])
        dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        c = await signed_in(dash, VIEWER)
        r = await c.get("/q/acl/server")
        assert r.status_code == 200, r.text
        page = r.text
        assert dd(page, "verdict").startswith("ready")  # INFO is not checked, as the CLI
        assert "+info" in dd(page, "memory-info-error")
        for ident in ("replicas-error", "redis-version"):
            text = dd(page, ident)
            assert "NoPermissionError" in text and "ACL" in text, text
        checks = checks_of(page)
        assert [c["name"] for c in checks] == ["queue readable", "eviction policy"], checks
        assert "not checked" in str(checks[1]) and "noeviction" in str(checks[1])
        assert 'data-setting="core.prefix"' in page
        m = await c.get("/q/acl/server?memory=1&samples=10")
        assert m.status_code == 200
        assert attrs(m.text, "state", "jobs")["waiting"] == ("4",)
        for text in (page, m.text):
            assert PASSWORD not in text
        assert "noinfo:" not in page and "***@127.0.0.1" in dd(page, "backend")
        settings = settings_of(page)
        assert settings["connection"] == dd(page, "backend")
    finally:
        await q.clear(force=True)
        await q.close()


async def test_a_damaged_key_is_named_and_the_page_renders(
    app: str, redis_url: str, prefix: str
) -> None:
    q = build(redis_url, prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        await q.add_job("n", {})
        client.delete(q.keys.meta)
        client.set(q.keys.meta, "not a hash")
        dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        c = await signed_in(dash, VIEWER)
        r = await c.get("/q/srv/server?memory=1")
        assert r.status_code == 200, r.text
        code, out = await cli("health", app, "--json")
        health = json.loads(out)
        assert code == 4 and checks_of(r.text) == health["checks"]
        assert (
            health["checks"][0]["name"] == "keys" and q.keys.meta in health["checks"][0]["detail"]
        )
        assert 'data-exit="4"' in r.text
        # The other sections still render: replicas, memory (with the damage named), config.
        assert dd(r.text, "repl-role") == "master"
        problems = re.findall(r'class="err memory-problem">(.*?)</p>', r.text, re.S)
        assert problems and q.keys.meta in unescape(problems[0])
        assert 'data-setting="core.prefix"' in r.text
    finally:
        client.delete(q.keys.meta)
        client.close()
        await q.clear(force=True)
        await q.close()


async def test_a_server_that_does_not_answer_is_said_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str
) -> None:
    import os
    import signal

    from kitium_queue.dashboard import views_server

    monkeypatch.setattr(views_server, "SECTION_TIMEOUT_S", 0.5)
    srv = RedisServer().start()
    q = JobQueue("stuck", redis=srv.url)
    sound = JobQueue("a-sound", redis=redis_url, prefix=prefix)  # first by name
    assert srv.pid is not None
    try:
        await q.add_job("n", {})
        dash = create_dashboard(queues=[sound, q], tokens=TOKENS, refresh_ms=0)
        c = await signed_in(dash, VIEWER)
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            r = await c.get("/q/stuck/server?memory=1")
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        assert r.status_code == 200, r.text
        assert dd(r.text, "health-error") == "health check: Redis did not answer within 0.5 s"
        assert 'data-exit="3"' in r.text
        for ident in ("replicas-error", "memory-error"):
            assert dd(r.text, ident) == "not read: Redis did not answer (see Health)"
        assert 'data-setting="core.prefix"' in r.text
    finally:
        await q.close()
        await sound.close()
        srv.close()


# ---------------------------------------------------------------------------- who may read
async def test_a_viewer_reads_through_the_read_guards_and_no_session_is_refused(
    redis_url: str, prefix: str
) -> None:
    assert read_permission("server_status") is Permission.VIEW_JOB
    q = JobQueue("a/b", redis=redis_url, prefix=prefix)
    seen: list[ReadCall] = []
    refuse: set[str] = set()

    def guard(call: ReadCall) -> None:
        seen.append(call)
        if call.query in refuse:
            raise PermissionDeniedError(f"{call.principal} may not {call.query}")

    q.queries.add_guard(guard)
    try:
        dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        anon = client_for(dash)
        r = await anon.get("/q/a~b/server")
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
        assert seen == []  # nothing was read for it
        c = await signed_in(dash, VIEWER)
        r = await c.get("/q/a~b/server")
        assert r.status_code == 200 and 'action="/q/a~b/server"' in r.text
        assert ("server_status", "vera@example.com") in {(x.query, x.principal) for x in seen}
        assert (await c.get("/q/nope/server")).status_code == 404
        refuse.add("server_status")
        r = await c.get("/q/a~b/server")
        assert r.status_code == 403 and "may not server_status" in r.text
        # A refused sub-read (the memory sample) is said in its section only.
        refuse.clear()
        refuse.add("measure_footprint")
        r = await c.get("/q/a~b/server?memory=1")
        assert r.status_code == 200 and "may not measure_footprint" in dd(r.text, "memory-error")
    finally:
        await q.close()


async def test_a_memory_queue_renders_every_section() -> None:
    """memory:// has no INFO, replicas or MEMORY USAGE: each section says so."""
    q = JobQueue("mem", redis=f"memory://{uuid.uuid4().hex}")
    try:
        await q.add_job("n", {})
        dash = create_dashboard(queues=[q], tokens=TOKENS, refresh_ms=0)
        c = await signed_in(dash, VIEWER)
        r = await c.get("/q/mem/server?memory=1")
        assert r.status_code == 200, r.text
        assert dd(r.text, "verdict").startswith("ready")
        assert dd(r.text, "replicas-error") == "memory:// has no replicas"
        assert "needs a Redis server" in dd(r.text, "memory-error")
        assert 'data-setting="core.prefix"' in r.text
    finally:
        await q.close()
