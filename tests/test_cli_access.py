"""``kitium-queue access``, ``audit`` and ``acl`` against a real Redis: grants from the
shell, the audit log queried and verified (exit 1 when broken), retention, and Redis ACL
rules printed, checked against the server and applied."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
from click.testing import CliRunner, Result

from kitium_queue.cli import main

pytestmark = pytest.mark.redis_only

KEY = secrets.token_hex(32)


@pytest.fixture
def kq(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("KITIUM_QUEUE_AUDIT_KEY", KEY)
    monkeypatch.delenv("KITIUM_QUEUE_REDIS", raising=False)

    def run(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(main, [*args, "--redis", redis_url, "--prefix", prefix])
        assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
        assert "Traceback" not in result.output + result.stderr
        return result

    yield run
    with redis_sync.Redis.from_url(redis_url) as client:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)


def test_grants_from_the_shell(kq: Any) -> None:
    out = kq("access", "grant", "alice@acme.com", "acme-*", "--role", "operator",
             "--permission", "can_add_job", "--as", "root").output  # fmt: skip
    assert "alice@acme.com\tacme-*\trole=operator\tpermissions=can_add_job" in out
    assert "by=root" in out
    listed = json.loads(kq("access", "list", "--json").output)
    assert [(g["principal_id"], g["queue_pattern"], g["role"]) for g in listed] == [
        ("alice@acme.com", "acme-*", "operator")
    ]
    assert listed[0]["effective"] == ["can_add_job", "can_modify_job", "can_view_job"]
    check = kq("access", "check", "alice@acme.com", "acme-orders", "--json").output
    assert json.loads(check)["grants"] == ["acme-*"]
    kq("access", "check", "alice@acme.com", "acme-orders", "--permission", "canAddJob")
    denied = kq("access", "check", "alice@acme.com", "acme-orders", "--permission",
                "can_control_queue", code=1)  # fmt: skip
    assert "DENIED" in denied.output
    kq("access", "check", "alice@acme.com", "globex", "--permission", "can_view_job", code=1)
    assert "revoked" in kq("access", "revoke", "alice@acme.com", "acme-*").output
    again = kq("access", "revoke", "alice@acme.com", "acme-*", code=1)
    assert "holds no grant" in again.stderr
    assert "no grants" in kq("access", "list").output
    bad = kq("access", "grant", "bob", "acme-{x}", "--role", "viewer", code=2)
    assert "invalid queue pattern" in bad.stderr


def test_audit_query_verify_and_trim(kq: Any, redis_url: str, prefix: str) -> None:
    kq("access", "grant", "bob", "q1", "--role", "viewer", "--as", "root")
    kq("access", "grant", "carol", "q2", "--role", "admin", "--as", "root")
    kq("access", "revoke", "bob", "q1", "--as", "root")
    text = kq("audit", "query").output.splitlines()
    assert len(text) == 3 and "access.revoke" in text[0] and "authentic=yes" in text[0]
    first, more = kq("audit", "query", "-n", "1").output.splitlines()
    assert first == text[0] and more.startswith("more\t--cursor ")
    rest = kq("audit", "query", "--cursor", more.split(" ")[-1]).output.splitlines()
    assert rest == text[1:]
    rows = json.loads(kq("audit", "query", "--json", "--action", "access.grant",
                         "--oldest-first").output)  # fmt: skip
    assert [r["resource"] for r in rows] == ["q1", "q2"]
    assert [r["principal"] for r in rows] == ["root", "root"]
    intact = kq("audit", "verify").output
    assert "chain\tintact\tentries=3\tstart=genesis" in intact
    head = next(line.split("\t")[1] for line in intact.splitlines() if line.startswith("head"))
    kq("audit", "verify", "--checkpoint", head)
    # Someone edits history: verify names the entry and exits 1.
    with redis_sync.Redis.from_url(redis_url) as client:
        stream = f"{prefix}:{{!access}}:audit"
        entries = client.xrange(stream)
        entries[1][1][b"who"] = b"mallory"
        client.delete(stream)
        for entry_id, fields in entries:
            client.xadd(stream, fields, id=entry_id)
    broken = kq("audit", "verify", "--json", code=1)
    report = json.loads(broken.output)
    assert report["first_problem"]["kind"] == "altered"
    assert report["first_problem"]["entry_id"] == entries[1][0].decode()
    assert "authentic=NO" in kq("audit", "query", "--principal", "mallory").output
    refused = kq("audit", "trim", "--max-entries", "1", code=1)
    assert "trimming would remove the evidence" in refused.stderr
    assert "removed 3 entries" in kq("audit", "trim", "--max-entries", "1", "--force").output
    kq("audit", "verify")  # the broken part is gone; the rest verifies
    bad = kq("audit", "verify", "--checkpoint", "x:y", code=2)
    assert "N:ID:MAC" in bad.stderr


def test_acl_rules_printed_checked_and_applied(
    kq: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = kq("acl", "redis-rules", "--user", "tenant-acme", "--queue", "acme-*",
             "--feature", "groups", "--format", "json").output  # fmt: skip
    rules = json.loads(out)
    assert rules["keys"] and rules["keys"][0].endswith(":{acme-*")
    assert "sismember" in rules["commands"] and "evalsha" in rules["commands"]
    line = kq("acl", "redis-rules", "--user", "t", "--queue", "q", "--format", "acl-file")
    assert line.output.startswith("user t reset on >CHANGE-ME ")
    wide = kq("acl", "redis-rules", "--user", "t", "--queue", "a*b", code=2)
    assert "trailing" in wide.stderr
    monkeypatch.setenv("KQ_TEST_ACL_PW", "pw-" + secrets.token_hex(8))
    applied = kq("acl", "redis-rules", "--user", "kq-cli-test", "--queue", "q",
                 "--apply", "--password-env", "KQ_TEST_ACL_PW")  # fmt: skip
    try:
        assert "created on the server" in applied.stderr
        assert "pw-" not in applied.output + applied.stderr
        with redis_sync.Redis.from_url(redis_url) as client:
            assert b"kq-cli-test" in [u if isinstance(u, bytes) else u.encode()
                                      for u in client.acl_users()]  # fmt: skip
    finally:
        with redis_sync.Redis.from_url(redis_url) as client:
            client.acl_deluser("kq-cli-test")
    missing = kq("acl", "redis-rules", "--user", "u", "--queue", "q", "--apply", code=2)
    assert "--password-env" in missing.stderr


@pytest.mark.redis_only
@pytest.mark.parametrize("debug", [False, True])
def test_apply_on_a_server_that_refuses_acl_says_so_and_never_shows_the_password(
    monkeypatch: pytest.MonkeyPatch, debug: bool
) -> None:
    """A managed service without ACL: the reply ("unknown command 'ACL', with args
    beginning with: 'SETUSER' ... '>PASSWORD'") quotes the password; it was shown
    mangled by the redaction, and whole by --debug's traceback."""
    from _redis import RedisServer

    password = "pw-" + secrets.token_hex(8)
    monkeypatch.setenv("KQ_TEST_ACL_PW", password)
    with RedisServer("--rename-command", "ACL", "") as srv:
        args = ["--debug"] if debug else []
        got = CliRunner().invoke(
            main,
            [*args, "acl", "redis-rules", "--user", "u1", "--queue", "q", "--apply",
             "--password-env", "KQ_TEST_ACL_PW", "--redis", srv.url],
        )  # fmt: skip
    text = got.output + got.stderr
    assert got.exit_code == 1, text
    assert password not in text and "SETUSER" in text and "unknown command" in text, text
    assert "provider's tools" in text and "unexpected" not in text, text
