"""Issue 19, items 5, 6, 8 and 11: what the library shows and names.

* Item 5 — credentials never shown: a table of hostile ``redis=`` settings (passwords with
  unencoded ``/ ? # @ :`` or spaces, mixed-case schemes, sentinel and cluster URLs with
  several hosts, unix sockets, ``?password=``, a forgotten ``@``, unparseable URLs,
  dicts). For each, the secret appears in no error (nor its chained exceptions), no
  ``describe()``, no ``health_check()`` and no ``kitium-queue health --redis`` output.
* Item 6 — queue names and prefixes that would widen an ACL key pattern (glob
  characters, braces, whitespace, control characters, lone surrogates, quotes) are
  refused; against a real Redis, the documented rules of queue ``t`` grant nothing of
  ``tax-refunds``, while the pattern a name ``t*`` would have produced does.
* Item 8 — partitioned ids: only a canonical ``"<partition>:<id>"`` is read; a chosen id
  that begins like one is refused; the issue's repro (``cancel_job`` with one customer's
  id removing another's job) no longer acts on the other job.
* Item 11 — CLI text output: control characters, ANSI escapes, bidirectional overrides,
  line separators and lone surrogates in any field are escaped, so a failure reason
  ``"x\\nFAKE ROW\\tdlq"`` shows as one row in ``dlq list`` and ``events``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio
from click.testing import CliRunner
from redis.exceptions import NoPermissionError

from _redis import free_port
from helpers import wait_for_status
from kitium_queue import (
    ConfigurationError,
    JobNotFoundError,
    JobQueue,
    JobStatus,
    NonRetryableError,
    PartitionedQueue,
    PermissionDeniedError,
)
from kitium_queue.cli import main, text_field
from kitium_queue.connection import REDACTED_PLACEHOLDER, ConnectionFactory, redact_url
from kitium_queue.keys import QueueKeys

# Distinctive halves: neither may appear anywhere, whichever way a URL was split.
S1, S2 = "S3cr3tQx", "Zq9Wv"


def _assert_hidden(text: str, where: str = "") -> None:
    for part in (S1, S2):
        assert part not in text, f"secret fragment {part!r} shown{where}: {text!r}"


def _exception_text(exc: BaseException) -> str:
    """The printed traceback plus every chained exception's text (error trackers read
    ``__context__`` and ``__cause__`` even when a traceback hides them)."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts.append(repr(e))
        todo += [e.__cause__, e.__context__]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def closed_ports() -> tuple[int, int]:
    """Two loopback ports nothing listens on: connections are refused at once."""
    return free_port(), free_port()


def _hostile_settings(port: int, port2: int, live: str) -> list[Any]:
    s = f"{S1}{S2}"
    host = f"127.0.0.1:{port}"
    return [
        f"Redis://:{s}@{host}/0",
        f"REDISS://user:{s}@{host}/0",
        f"rEdIs://u:{s}@{host}",
        f"redis://:{S1}/{S2}@{host}/0",  # unencoded '/': once read as port S1, path S2@...
        f"redis://:{S1}?{S2}@{host}/0",
        f"redis://:{S1}#{S2}@{host}/0",
        f"redis://:{S1}@{S2}@{host}/0",  # '@' in the password: valid, last '@' counts
        f"redis://:{S1} {S2}@{host}/0",
        f"redis://u:{S1}:{S2}@{host}/0",
        f"redis://{s}@{host}/0",  # password only, no colon
        f"redis://:{S1}%2F{S2}@{host}/0",  # percent-encoded: decoded form hidden too
        f"redis://{host}/0?password={s}",
        f"redis://{host}/0?socket_timeout=1&password={s}#frag",
        f"unix:///tmp/kq-no-such-{uuid.uuid4().hex[:6]}.sock?password={s}&db=0",
        f"unix://:{s}@/tmp/kq-no-such-{uuid.uuid4().hex[:6]}.sock?db=0",
        f"redis+sentinel://:{s}@{host},127.0.0.1:{port2}/mymaster?sentinel_password={s}",
        f"REDIS+SENTINEL://:{s}@{host},127.0.0.1:{port2}/mymaster/1",
        f"redis+sentinel://:{s}@{host}",  # no service name
        f"redis+sentinel://:{s}@{host}/svc/notadb",  # bad db
        f"redis+sentinel://:{S1}/{S2}@{host}/svc",
        f"redis+cluster://:{s}@{host},127.0.0.1:{port2}/3",  # cluster with a db
        f"rediss+cluster://u:{s}@{host},127.0.0.1:{port2}",
        f"redis+cluster://:{s}",  # '@' forgotten: the password sits where a port goes
        f"redis://:{s}",
        f"redis://127.0.0.1:{s}/0",
        f"valkey://:{s}@{host}",  # unsupported scheme
        f"{s}@{host}",  # no scheme at all
        f"redis:/:{s}@{host}",  # broken scheme
        f"redis://:{s}@[::1",  # unparseable
        f"redis://:{s}@{live}/0",  # a live server that has no password set: AUTH fails
        {"host": "127.0.0.1", "port": port, "password": s},
        {"host": "127.0.0.1", "port": port, "username": "u", "password": s, "tls": False},
        {"url": f"redis://:{S1}/{S2}@{host}/0"},
        {"url": f"redis://:{s}@{host}/0"},
        {"url": f"redis+cluster://:{s}@{host}"},  # wrong scheme for the dict's url
        {"sentinels": [host], "service_name": "svc", "sentinel_password": s, "password": s},
    ]


def _settings_ids() -> list[str]:
    return [f"s{i:02d}" for i in range(36)]


@pytest.mark.redis_only
@pytest.mark.parametrize("index", range(36), ids=_settings_ids())
async def test_credentials_never_shown_in_errors_describe_or_health(
    index: int, closed_ports: tuple[int, int], redis_server: Any
) -> None:
    settings = _hostile_settings(*closed_ports, live=f"127.0.0.1:{redis_server.port}")
    assert len(settings) == 36
    setting = settings[index]
    _assert_hidden(redact_url(setting), " by redact_url")
    try:
        q = JobQueue("redact", redis=setting)
    except ConfigurationError as exc:
        _assert_hidden(_exception_text(exc), " in the ConfigurationError")
        return
    q2 = JobQueue("redact", redis=setting)  # a second queue: both checks run at once

    async def raised() -> BaseException | None:
        try:
            await q2.client()
        except Exception as exc:
            return exc
        return None

    try:
        _assert_hidden(q.connection.describe(), " by describe()")
        health, error = await asyncio.wait_for(asyncio.gather(q.health_check(), raised()), 60)
        _assert_hidden(repr(health), " by health_check()")
        if health.healthy:  # the live server without a password accepts any (nopass)
            assert isinstance(setting, str) and str(redis_server.port) in setting
            return
        assert health.error, health
        # The exception itself (and what it chains), as a caller or error tracker sees it.
        assert error is not None
        _assert_hidden(_exception_text(error), " in the connection error")
    finally:
        await q.close()
        await q2.close()


def test_redact_url_table() -> None:
    table = {
        "redis://h:6379/0": "redis://h:6379/0",
        "Redis://:pw@h": "Redis://***@h",
        "redis://u:p/w@h:1/0": "redis://***@h:1/0",
        "redis+sentinel://:pw@s1:26379,s2/svc/1?sentinel_password=x": (
            "redis+sentinel://***@s1:26379,s2/svc/1"
        ),
        "unix:///tmp/r.sock?password=pw&db=1": "unix:///tmp/r.sock?db=1",  # db only
        "unix://:pw@/tmp/r.sock": "unix://***@/tmp/r.sock",
        "redis://:pw": "redis://:***",
        "redis://[::1]:6379/0": "redis://[::1]:6379/0",
        "pw@h:1": "***@h:1",
        "memory://x": "memory://x",
        "see redis://u:pw@h:1/0?password=pw for details": "see redis://***@h:1/0 for details",
        "cannot reach h:6379 (password=pw&db=0)": "cannot reach h:6379 (password=***&db=0)",
        # Where Redis says a script raised: that '@' delimits no credentials.
        "WRONGTYPE Operation against a key script: c0f4, on @user_script:163.": (
            "WRONGTYPE Operation against a key script: c0f4, on user_script:163."
        ),
        "redis://u:pw@h:1 failed: ERR x, on @user_script:2.": (
            "redis://***@h:1 failed: ERR x, on user_script:2."
        ),
        "pw@h on @user_function:1": "***@h on user_function:1",
    }
    for given, shown in table.items():
        assert redact_url(given) == shown, given
    assert redact_url("AUTH failed for pw2 here", secrets=["pw2"]) == "AUTH failed for *** here"
    assert "pw" not in redact_url({"host": "h", "password": "pw", "tls": {"password": "pw"}})

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("redis://:pw@h")

    assert redact_url(Hostile()) == REDACTED_PLACEHOLDER  # fails closed, never open
    # Linear on hostile input: no pattern that backtracks on long runs.
    for long_text in (
        "a" * 200_000,
        "password" * 25_000,
        "redis://" + "h:1," * 50_000,
        "x@" * 50_000,
        "a://b?" * 30_000,
    ):
        started = time.monotonic()
        redact_url(long_text)
        assert time.monotonic() - started < 2, long_text[:20]


def test_describe_shows_where_without_credentials() -> None:
    assert ConnectionFactory("redis://:pw@h:1/2").describe() == "redis://***@h:1/2"
    assert ConnectionFactory("REDIS://h:1/2?password=pw").describe() == "REDIS://h:1/2"
    f = ConnectionFactory("redis+sentinel://:pw@s1,s2:2/svc?sentinel_password=pw")
    assert f.describe() == "sentinel s1:26379,s2:2/svc"
    assert "pw" not in f.redact("error from s1 with pw in it")


def test_a_unix_url_with_two_slashes_is_refused_not_read_as_a_host() -> None:
    """``unix://tmp/r.sock`` was read as host ``tmp`` (dropped) and path ``/r.sock``: a
    connection to the wrong socket, found out only at the first call."""
    with pytest.raises(ConfigurationError, match="three slashes") as info:
        ConnectionFactory(f"unix://:{S1}@tmp/r.sock?db=1")
    _assert_hidden(_exception_text(info.value))
    for fine in ("unix:///tmp/r.sock", "UNIX:///tmp/r.sock?db=2", "unix://:pw@/tmp/r.sock"):
        assert ConnectionFactory(fine).describe().lower().startswith("unix://")


def test_ambiguous_credentials_are_refused_with_a_hint() -> None:
    with pytest.raises(ConfigurationError, match="percent-encoded") as info:
        ConnectionFactory(f"redis://:{S1}/{S2}@h:6379/0")
    _assert_hidden(_exception_text(info.value))
    # Encoded, the same password works.
    f = ConnectionFactory(f"redis://:{S1}%2F{S2}@h:6379/0")
    assert f.describe() == "redis://***@h:6379/0"


# ------------------------------------------------------------------ CLI: health


@pytest.fixture
def cli_app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[Callable[..., str]]:
    """Writes a module with a queue (``dlq`` on) and returns ``module:queue``."""
    made: list[str] = []

    def make(name: str = "cli") -> str:
        module = f"kq_hardening_app_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{module}.py").write_text(
            "from kitium_queue import JobQueue\n"
            f"queue = JobQueue({name!r}, redis={redis_url!r}, prefix={prefix!r})\n"
        )
        made.append(module)
        return f"{module}:queue"

    sys.path.insert(0, str(tmp_path))
    try:
        yield make
    finally:
        sys.path.remove(str(tmp_path))
        for module in made:
            sys.modules.pop(module, None)


@pytest.mark.redis_only
@pytest.mark.parametrize(
    "template",
    [
        "redis://:{S1}/{S2}@127.0.0.1:{port}/0",
        "Redis://:{S1}{S2}@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password={S1}{S2}",
        "redis+sentinel://:{S1}{S2}@127.0.0.1:{port}/svc?sentinel_password={S1}{S2}",
        "redis://:{S1}{S2}",
        "unix://:{S1}{S2}@/tmp/kq-none.sock",
        "redis://:{S1}{S2}@127.0.0.1:{live}/0",
    ],
)
def test_cli_health_never_prints_the_password(
    cli_app: Callable[..., str],
    closed_ports: tuple[int, int],
    redis_server: Any,
    template: str,
) -> None:
    url = template.format(S1=S1, S2=S2, port=closed_ports[0], live=redis_server.port)
    result = CliRunner().invoke(main, ["health", cli_app(), "--json", "--redis", url])
    if "{live}" in template:  # the test server has no password set: any one is accepted
        assert result.exit_code == 0 and "redis://***@127.0.0.1:" in result.stdout
    else:
        assert result.exit_code != 0, result.output
    _assert_hidden(result.output + result.stderr, " by kitium-queue health")
    if result.exit_code == 3 and result.stdout.startswith("{"):  # it ran: JSON verdict
        report = json.loads(result.stdout)
        assert report["healthy"] is False and report["error"], report


# ------------------------------------------------------------------ item 6: names and ACL

REFUSED_NAMES = [
    "t*",
    "t?",
    "t[a]",
    "a]b",
    "t\\",
    "a b",
    "a\tb",
    "a\nb",
    "a\x1b[31mred",
    "a\x00b",
    "x\ud800",
    "a{b}",
    "a}",
    "",
    "a@b",
    'a"b',
    "a'b",
    "a;b",
    "a$b",
    "a\u202eb",
    "a\u200bb",
    "a\u2028b",
    "a\u00a0b",
    "a|b",
    "a`b",
]
ACCEPTED_NAMES = ["tax-refunds", "billing/inv:2024#1.x+y_z", "häagen", "订单", "हिन्दी"]


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_names_that_could_widen_a_key_pattern_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match=r"invalid queue name") as info:
        JobQueue(name)
    if name:
        assert "letters, digits and - _ . : # / +" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"invalid key prefix"):
        QueueKeys("ok", prefix=name or "a b")
    with pytest.raises(ConfigurationError, match=r"invalid queue name"):
        PartitionedQueue(name, partitions=2)  # before its names are encoded
    with pytest.raises(ConfigurationError, match=r"invalid queue name"):
        JobQueue(123)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ACCEPTED_NAMES)
def test_plain_names_are_accepted(name: str) -> None:
    keys = QueueKeys(name, prefix="kq-1.x")
    assert keys.wait == f"kq-1.x:{{{name}}}:wait"


ACL_PASSWORD = uuid.uuid4().hex


@pytest.fixture
def acl_user(redis_url: str) -> Iterator[Callable[..., str]]:
    """Makes Redis ACL users (password ``ACL_PASSWORD``) with the given rules; removes
    them after the test."""
    admin = redis_sync.Redis.from_url(redis_url)
    users: list[str] = []

    def make(*rules: str) -> str:
        user = f"kqh{uuid.uuid4().hex[:8]}"
        admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", user, "reset", "on", f">{ACL_PASSWORD}", *rules
        )
        users.append(user)
        return user

    try:
        yield make
    finally:
        for user in users:
            admin.acl_deluser(user)
        admin.close()


def _user_url(redis_url: str, user: str) -> str:
    return redis_url.replace("redis://", f"redis://{user}:{ACL_PASSWORD}@", 1)


@pytest.mark.redis_only
async def test_acl_pattern_of_one_queue_grants_no_other(
    acl_user: Callable[..., str], redis_url: str, prefix: str
) -> None:
    # The other tenant's queue, with a job holding its payload.
    async with JobQueue("tax-refunds", redis=redis_url, prefix=prefix) as other:
        secret_job = await other.add_job("refund", {"iban": "DE00"})
    job_key = f"{prefix}:{{tax-refunds}}:job:{secret_job}"

    # The documented recipe for queue "t": works for "t", refuses "tax-refunds".
    t_user = acl_user(
        f"~{prefix}:{{t}}:*", "resetchannels", f"&{prefix}:{{t}}:*", "+@all", "-@dangerous"
    )
    url = _user_url(redis_url, t_user)
    async with JobQueue("t", redis=url, prefix=prefix) as mine:
        jid = await mine.add_job("j", {})
        assert (await mine.get_job_status(jid)) is not None
    async with JobQueue("tax-refunds", redis=url, prefix=prefix) as theirs:
        with pytest.raises(PermissionDeniedError):
            await theirs.get_stats()
        with pytest.raises(PermissionDeniedError):
            await theirs.clear(force=True)
        # Direct reads are refused as well (redis-py's NoPermissionError here).
        with pytest.raises((PermissionDeniedError, NoPermissionError)):
            await theirs.get_job_status(secret_job)
    raw = redis.asyncio.Redis.from_url(url)
    try:
        with pytest.raises(NoPermissionError):
            await raw.hgetall(job_key)
    finally:
        await raw.aclose()

    # What the recipe would have become for a queue named "t*": Redis reads it as a
    # glob and grants tax-refunds' keys. Such a name (and prefix) cannot be made.
    glob_user = acl_user(f"~{prefix}:{{t*}}:*", "+@all", "-@dangerous")
    leaky = redis.asyncio.Redis.from_url(_user_url(redis_url, glob_user))
    try:
        assert await leaky.hgetall(job_key)  # the class of hole the name rule closes
    finally:
        await leaky.aclose()
    for bad in ("t*", "t?", "t[a]", "t\\"):
        with pytest.raises(ConfigurationError):
            JobQueue(bad, redis=redis_url, prefix=prefix)
        with pytest.raises(ConfigurationError):
            JobQueue("t", redis=redis_url, prefix=f"{prefix}{bad}")
    async with JobQueue("tax-refunds", redis=redis_url, prefix=prefix) as other:
        info = await other.get_job_status(secret_job)
        assert info is not None and info.status is JobStatus.WAITING
        await other.clear(force=True)


# ------------------------------------------------------------------ item 8: partitioned ids


@pytest.fixture
async def make_pq(backend_url: str, prefix: str) -> AsyncIterator[Callable[..., PartitionedQueue]]:
    made: list[PartitionedQueue] = []

    def make(name: str = "inv", partitions: int = 4) -> PartitionedQueue:
        pq = PartitionedQueue(name, partitions=partitions, redis=backend_url, prefix=prefix)
        made.append(pq)
        return pq

    yield make
    for pq in made:
        await pq.close()


async def test_issue_repro_cancel_with_one_customers_id_never_removes_anothers(
    make_pq: Callable[..., PartitionedQueue],
) -> None:
    pq = make_pq()
    a_full = await pq.add_job("charge", {"customer": "A"}, job_id="inv-4")
    p, inner = pq.parse_id(a_full) or (None, None)
    assert (p, inner) == (pq.partition_of("inv-4"), "inv-4")
    # Customer B chooses the id that reads as A's full id: refused, nothing written.
    with pytest.raises(ConfigurationError, match="begins like a full id"):
        await pq.add_job("charge", {"customer": "B"}, job_id=a_full)
    with pytest.raises(ConfigurationError, match="begins like a full id"):
        await pq.add_jobs([("charge", {"customer": "B"}, {"job_id": a_full})])
    assert (await pq.get_stats()).waiting == 1
    # A bare id is not a full id: never guessed at, never acts on a job.
    assert await pq.get_job_status("inv-4") is None
    assert await pq.get_job_logs("inv-4") == []
    for action in (pq.cancel_job, pq.remove_job, pq.retry_job):
        with pytest.raises(JobNotFoundError, match="not a job id of partitioned queue"):
            await action("inv-4")
    info = await pq.get_job_status(a_full)
    assert info is not None and info.status is JobStatus.WAITING and info.data == {"customer": "A"}
    assert await pq.cancel_job(a_full) == "removed"
    assert await pq.get_job_status(a_full) is None


async def test_two_customers_with_the_same_chosen_id_keep_separate_jobs(
    make_pq: Callable[..., PartitionedQueue],
) -> None:
    pq = make_pq(partitions=8)
    keys = [f"k{i}" for i in range(100)]
    k_a = keys[0]
    k_b = next(k for k in keys if pq.partition_of(k) != pq.partition_of(k_a))
    a = await pq.add_job("j", "A", job_id="inv-4", partition_key=k_a)
    b = await pq.add_job("j", "B", job_id="inv-4", partition_key=k_b)
    assert a != b
    assert await pq.cancel_job(b) == "removed"
    info = await pq.get_job_status(a)
    assert info is not None and info.data == "A" and info.status is JobStatus.WAITING


async def test_only_canonical_full_ids_are_read(make_pq: Callable[..., PartitionedQueue]) -> None:
    pq = make_pq(partitions=4)
    assert pq.parse_id("0:5") == (0, "5")
    assert pq.parse_id("3:a:b") == (3, "a:b")  # split at the first ':' only
    for bad in (
        "01:5",
        "+1:5",
        "-1:5",
        " 1:5",
        "1 :5",
        "\u0661:5",
        "\uff11:5",
        "4:5",
        "1024:5",
        ":5",
        "5",
        "3:",
        "",
        "9" * 5000 + ":5",
    ):
        assert pq.parse_id(bad) is None, bad
        assert await pq.get_job_status(bad) is None
    # Chosen ids may hold ':' elsewhere, and round-trip through their full id.
    full = await pq.add_job("j", 1, job_id="inv:4")
    assert full == f"{pq.partition_of('inv:4')}:inv:4"
    info = await pq.get_job_status(full)
    assert info is not None and info.id == full
    for bad_id in ("0:x", "12:x", "007:x"):
        with pytest.raises(ConfigurationError):
            await pq.add_job("j", 1, job_id=bad_id)


# ------------------------------------------------------------------ item 11: CLI text


def test_text_field_escapes_everything_that_could_forge_output() -> None:
    hostile = "a\nb\rc\td\x1b[31me\x07f\x00g\u2028h\u2029i\u202ej\u200bk\x85l\ud800m\\n"
    shown = text_field(hostile)
    assert shown == (
        "a\\nb\\rc\\td\\x1b[31me\\x07f\\x00g\\u2028h\\u2029i\\u202ej\\u200bk\\x85l\\ud800m\\\\n"
    )
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202e]", shown)
    shown.encode("utf-8")  # no lone surrogate left: printable on any UTF-8 terminal
    # Distinct inputs stay distinct: a literal backslash-n is not a newline.
    assert text_field("a\\nb") != text_field("a\nb")
    plain = "plain text, ünïcode 订单 and spaces"
    assert text_field(plain) == plain


@pytest.mark.redis_only
def test_cli_rows_cannot_be_forged(
    cli_app: Callable[..., str], redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "x\nFAKE ROW\tdlq\x1b[2J"
    hostile_name = "bad\tname\nFORGED\tROW\x1b[31m"
    app = cli_app("forge")

    async def fail_one() -> str:
        async with JobQueue("forge", redis=redis_url, prefix=prefix) as q:

            @q.process("bad")
            async def bad(job: Any) -> None:
                raise NonRetryableError(reason)

            try:  # a tab in a chosen id, if the id rules let it through
                jid = await q.add_job("bad", {}, job_id="id\twith\ttabs")
            except ConfigurationError:
                jid = await q.add_job("bad", {})
            await q.start(concurrency=1)
            await wait_for_status(q, jid, JobStatus.DLQ, timeout=10)
            await q.worker.stop()
            # Any field read back from Redis is shown escaped, whoever wrote it.
            client = await q.client()
            await client.hset(q.keys.job(jid), "n", hostile_name)
            return jid

    jid = asyncio.run(fail_one())
    runner = CliRunner()
    out = runner.invoke(main, ["dlq", "list", app])
    assert out.exit_code == 0, out.output
    rows = out.stdout.splitlines()
    assert len(rows) == 1, rows
    columns = rows[0].split("\t")
    assert len(columns) == 4, columns
    assert columns[0] == text_field(jid)
    assert columns[1] == "bad\\tname\\nFORGED\\tROW\\x1b[31m"
    assert columns[2] == "attempts=1"
    assert "x\\nFAKE ROW\\tdlq\\x1b[2J" in columns[3]
    assert "\x1b" not in out.stdout

    # events --from-start: replay what the stream holds and stop (the command follows
    # the stream forever otherwise).
    original = JobQueue.events

    def replay_once(self: JobQueue, **kw: Any) -> Any:
        return original(self, last_id=kw.get("last_id", "0"), block_ms=50, follow=False)

    monkeypatch.setattr(JobQueue, "events", replay_once)
    ev = runner.invoke(main, ["events", app, "--from-start"])
    assert ev.exit_code == 0, ev.output
    lines = ev.stdout.splitlines()
    assert lines, ev.output
    for line in lines:  # every line is a real entry: "<ms>-<seq>\t<event>\t<job id>\t..."
        assert re.match(r"\d+-\d+\t[a-z-]+\t", line), line
        assert line.count("\t") == 3, line
    # In the k=v column a value with a space is quoted, so it cannot forge another pair.
    quoted = re.compile(r'\treason="[^"]*x\\nFAKE ROW\\tdlq\\x1b\[2J"')
    assert any(quoted.search(line) for line in lines), lines
    assert "\x1b" not in ev.stdout

    missing = runner.invoke(main, ["job", app, "no\nsuch\x1b[31m"])
    assert missing.exit_code == 1
    assert "no\\nsuch\\x1b[31m" in missing.output and "\x1b" not in missing.output
