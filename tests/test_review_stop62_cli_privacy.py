"""The command line as a new user met it (stop 62), against a real Redis:

1. on a queue whose compliance feature redacts payload fields, ``kitium-queue job`` and
   ``jobs show`` printed the job's ``subject_id`` option (personal data) beside data
   shown as ``***``: it is masked wherever the payload is (the allowed case, no
   redaction, still shows it);
2. on a queue protected by access control no command but ``compliance erase`` could
   name the principal, and the refusal named ``JobQueue(..., principal=...)`` and
   ``acting_as(...)``: the global ``--as`` (or ``KITIUM_QUEUE_PRINCIPAL``) names it for
   every command, and the refusal says so; ``compliance erase`` asked its question
   before a refused principal was refused;
3. error lines escaped twice (``principal 'root\\\\x1b[2J'``): a value the message
   escaped already is shown once, while a raw control character is still escaped.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpers import app_module
from kitium_queue import JobQueue, acting_as
from kitium_queue.cli import main
from kitium_queue.features.access import AccessControlManager

pytestmark = pytest.mark.redis_only

KEY = secrets.token_hex(32)
SUBJECT = "u-2"


def _cli(*args: str, env: dict[str, str] | None = None, given: str | None = None) -> Result:
    # Each command imports its APP anew, as each run of kitium-queue does: an access
    # control manager's connections belong to the event loop of the command that used
    # them first.
    for arg in args:
        if arg.startswith("kq_protected_"):
            sys.modules.pop(arg.partition(":")[0], None)
    return CliRunner().invoke(main, list(args), env=env, input=given)


# ---------------------------------------------------------------------- 1. subject ids
@pytest.fixture
def compliance_app(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    source = (
        "from kitium_queue import JobQueue\n"
        "def make(name, fields):\n"
        f"    return JobQueue(name, redis={redis_url!r}, prefix={prefix!r},\n"
        "        advanced={'compliance': {'enabled': True, 'redact_fields': fields}})\n"
        "redacted = make('red', ['user.email'])\n"
        "plain = make('plain', [])\n"
    )
    with app_module(tmp_path, source, "kq_privacy") as module:
        yield module


def _add(redis_url: str, prefix: str, name: str, fields: list[str]) -> str:
    async def go() -> str:
        q = JobQueue(
            name,
            redis=redis_url,
            prefix=prefix,
            advanced={"compliance": {"enabled": True, "redact_fields": fields}},
        )
        try:
            return await q.add_job("pay", {"user": {"email": "a@b.c"}}, subject_id=SUBJECT)
        finally:
            await q.close()

    return asyncio.run(go())


def test_cli_views_mask_the_subject_id_where_they_mask_the_data(
    compliance_app: str, redis_url: str, prefix: str
) -> None:
    jid = _add(redis_url, prefix, "red", ["user.email"])
    app = f"{compliance_app}:redacted"
    shown = _cli("job", app, jid)
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["data"] == {"user": {"email": "***"}}
    assert doc["options"]["subject_id"] == "***"
    detail = _cli("--plain", "jobs", "show", app, jid)
    assert detail.exit_code == 0, detail.output
    assert 'options\t{"subject_id": "***"}' in detail.stdout
    as_json = json.loads(_cli("jobs", "show", app, jid, "--json").stdout)
    listed = json.loads(_cli("jobs", "list", app, "--json").stdout)["jobs"]
    assert as_json["options"]["subject_id"] == listed[0]["options"]["subject_id"] == "***"
    for out in (shown, detail):
        assert SUBJECT not in out.output
    # Loading the queue again (same process, same object) installs the view once.
    assert _cli("job", app, jid).exit_code == 0
    from kitium_queue.features.compliance.redaction import SubjectView

    queue = __import__(compliance_app).redacted
    assert sum(isinstance(v, SubjectView) for v in queue.ctx.info_views) == 1


def test_the_subject_id_is_shown_where_no_payload_is_redacted(
    compliance_app: str, redis_url: str, prefix: str
) -> None:
    jid = _add(redis_url, prefix, "plain", [])
    shown = _cli("job", f"{compliance_app}:plain", jid)
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["options"]["subject_id"] == SUBJECT
    assert doc["data"] == {"user": {"email": "a@b.c"}}


# ---------------------------------------------------------------------- 2. principals
@pytest.fixture
def protected(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[str]:
    """An APP whose queue 'red' access control protects: vera may view it, root may do
    anything anywhere; one job of SUBJECT waits."""
    source = (
        "from kitium_queue import JobQueue\n"
        "from kitium_queue.features.access import AccessControlManager\n"
        f"acm = AccessControlManager({redis_url!r}, prefix={prefix!r}, audit_key={KEY!r})\n"
        f"queue = acm.protect(JobQueue('red', redis={redis_url!r}, prefix={prefix!r},\n"
        "    advanced={'compliance': {'enabled': True, 'redact_fields': ['user.email']}}))\n"
    )

    async def seed() -> None:
        acm = AccessControlManager(redis_url, prefix=prefix, audit_key=KEY)
        q = acm.protect(
            JobQueue(
                "red",
                redis=redis_url,
                prefix=prefix,
                advanced={"compliance": {"enabled": True, "redact_fields": ["user.email"]}},
            )
        )
        try:
            await acm.grant_access({"principal_id": "vera", "queue_pattern": "red",
                                    "role": "viewer"})  # fmt: skip
            await acm.grant_access({"principal_id": "root", "queue_pattern": "*",
                                    "role": "admin"})  # fmt: skip
            with acting_as("root"):
                await q.add_job("pay", {"user": {"email": "a@b.c"}}, subject_id=SUBJECT)
        finally:
            await q.close()
            await acm.close()

    asyncio.run(seed())
    with app_module(tmp_path, source, "kq_protected") as module:
        yield f"{module}:queue"


NO_ENV = {"KITIUM_QUEUE_PRINCIPAL": ""}


def test_without_a_principal_the_refusal_says_how_to_name_one_on_the_command_line(
    protected: str,
) -> None:
    for args in (["jobs", "list", protected], ["compliance", "jobs", protected, SUBJECT]):
        out = _cli(*args, env=NO_ENV)
        assert out.exit_code == 1, out.output
        assert f"name one with kitium-queue --as PRINCIPAL {args[0]} ..." in out.stderr
        assert "KITIUM_QUEUE_PRINCIPAL" in out.stderr
        assert "acting_as(" not in out.stderr and "JobQueue(" not in out.stderr


def test_the_global_as_option_and_the_environment_name_the_principal(protected: str) -> None:
    listed = _cli("--as", "vera", "jobs", "list", protected, env=NO_ENV)
    assert listed.exit_code == 0, listed.output
    assert "\tpay\twaiting\t" in listed.stdout
    found = _cli("compliance", "jobs", protected, SUBJECT, env={"KITIUM_QUEUE_PRINCIPAL": "vera"})
    assert found.exit_code == 0, found.output
    assert found.stdout.strip()  # the job's id
    shown = _cli("--principal", "vera", "job", protected, found.stdout.strip(), env=NO_ENV)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["options"]["subject_id"] == "***"
    retention = _cli("--as", "root", "compliance", "retention", protected, "--json", env=NO_ENV)
    assert retention.exit_code == 0, retention.output
    # A refused principal is told which grant it lacks, in the command line's terms.
    refused = _cli("--as", "vera", "jobs", "remove", protected, "1", env=NO_ENV)
    assert refused.exit_code == 1, refused.output
    assert "principal 'vera' was refused" in refused.stderr
    assert "kitium-queue access grant" in refused.stderr
    bad = _cli("--as", "root\x1b[2J", "stats", protected, env=NO_ENV)
    assert bad.exit_code == 2 and "principal 'root\\x1b[2J'" in bad.stderr, bad.stderr


def test_erase_refuses_a_principal_without_the_grant_before_asking(protected: str) -> None:
    for args in (
        ["compliance", "erase", protected, SUBJECT, "--principal", "vera"],
        ["--as", "vera", "compliance", "erase", protected, SUBJECT],
        ["compliance", "erase", protected, SUBJECT],  # nobody acting
    ):
        out = _cli(*args, env=NO_ENV, given="y\n")
        assert out.exit_code == 1, out.output
        assert "[y/N]" not in out.output and "Aborted" not in out.output, out.output
        assert "refused erase_subject" in out.stderr or "no principal" in out.stderr, out.stderr
    # The job is still there; root is asked, and erases once it answers yes.
    asked = _cli("--as", "root", "compliance", "erase", protected, SUBJECT, env=NO_ENV,
                 given="n\n")  # fmt: skip
    assert asked.exit_code == 1 and "[y/N]" in asked.output, asked.output
    done = _cli("compliance", "erase", protected, SUBJECT, "--principal", "root", "--json",
                env=NO_ENV, given="y\n")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout[done.stdout.index("{") :])["jobs"] == 1


# ---------------------------------------------------------------------- 3. error lines
def test_an_escaped_value_in_an_error_is_shown_once(
    redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KITIUM_QUEUE_AUDIT_KEY", KEY)
    base = ["--redis", redis_url, "--prefix", prefix]
    mixed = _cli("access", "grant", "\u0430dmin", "q", "--role", "viewer", *base)
    assert mixed.exit_code == 2, mixed.output
    assert "principal '\\u0430dmin' mixes" in mixed.stderr, mixed.stderr
    ctrl = _cli("access", "grant", "root\x1b[2J", "q", "--role", "viewer", *base)
    assert ctrl.exit_code == 2, ctrl.output
    assert "principal 'root\\x1b[2J' contains" in ctrl.stderr, ctrl.stderr
    assert "\x1b" not in ctrl.stderr
    source = (
        "from kitium_queue import JobQueue\n"
        f"queue = JobQueue('tq', redis={redis_url!r}, prefix={prefix!r},\n"
        "    advanced={'multi_tenancy': {'enabled': True}})\n"
    )
    with app_module(tmp_path, source, "kq_tenant_err") as module:
        out = _cli("tenants", "show", f"{module}:queue", "a\nb")
    assert out.exit_code == 2, out.output
    assert "got 'a\\nb'" in out.stderr and "\\\\" not in out.stderr, out.stderr


def test_a_raw_control_character_in_an_error_is_still_escaped(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    # The module builds its queue on the real Redis, then fails with a message holding
    # a raw escape sequence beside a value escaped already.
    source = (
        "from kitium_queue import ConfigurationError, JobQueue\n"
        f"queue = JobQueue('raw', redis={redis_url!r}, prefix={prefix!r})\n"
        "raise ConfigurationError('bad \\x1b[2Jsetting \\u202e for ' + repr('a\\nb'))\n"
    )
    with app_module(tmp_path, source, "kq_raw_err") as module:
        out = _cli("stats", f"{module}:queue")
    assert out.exit_code == 2, out.output
    assert "Error: bad \\x1b[2Jsetting \\u202e for 'a\\nb'" in out.stderr, out.stderr
    assert "\x1b" not in out.stderr and "\u202e" not in out.stderr


async def test_the_librarys_own_redacted_queries_mask_the_subject_id(
    redis_url: str, prefix: str
) -> None:
    # Not only the CLI: a queue whose compliance redacts everywhere (a dashboard an
    # application mounts, its own get_job) masks the subject id where it masks the data.
    q = JobQueue(
        "everywhere",
        redis=redis_url,
        prefix=prefix,
        advanced={
            "compliance": {
                "enabled": True,
                "redact_fields": ["user.email"],
                "redact_everywhere": True,
            }
        },
    )
    try:
        jid = await q.add_job("n", {"user": {"email": "a@b.c"}}, {"subject_id": SUBJECT})
        info = await q.get_job_status(jid)
        assert info is not None
        assert info.data == {"user": {"email": "***"}}
        assert info.options["subject_id"] == "***"
    finally:
        await q.close()
