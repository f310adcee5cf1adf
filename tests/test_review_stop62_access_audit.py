"""Access control and audit as a new user met them (stop 62), against a real Redis:

1. a grant given one field in both spellings (``queue_pattern`` and ``queuePattern``,
   ``principal_id`` and ``principalId``, ``can_add_job`` and ``canAddJob``) was accepted
   with whichever came first: ``{"queue_pattern": "acme-*", "queuePattern": "*",
   "role": "admin"}`` granted admin on ``*``. Now refused, naming both spellings, and
   nothing is stored.
2. ``kitium-queue audit verify`` / ``trim`` could not be given the keys used before a
   key change: a log written across a rotation was "BROKEN" there while the API
   verified it. ``KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS`` (comma-separated) and
   ``--audit-previous-key-file`` (repeatable) give them; without them the verdict is
   UNVERIFIED and says how to give them. A wrong key was "BROKEN" too: now WRONG KEY,
   "no entry verifies with this key".
3. audit metadata masked secrets by a few key names only: ``signing_key``, ``hmac``,
   ``jwt``, ``otp``, ``pin``, ``card_number``, a URL's credentials and an
   ``["Authorization", "Bearer ..."]`` header pair reached Redis in clear.
4. ``kitium-queue access check nobody acme-orders`` printed ``nothing`` and exited 0.
5. ``grant_access`` / ``revoke_access`` checked nobody's grants: inside
   ``acting_as("mgr1")`` a manager of ``acme-*`` granted itself admin on ``*``. A
   principal named by ``acting_as`` now needs ``can_manage_queue`` on every queue; the
   manager's ``principal=`` and the CLI's ``--as`` (the operator) are trusted.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from click.testing import CliRunner, Result

from kitium_queue import (
    AccessControlManager,
    AccessDeniedError,
    AuditReport,
    ConfigurationError,
    acting_as,
)
from kitium_queue.cli import main

pytestmark = pytest.mark.redis_only

KEY1 = secrets.token_hex(32)
KEY2 = secrets.token_hex(32)


@pytest.fixture
async def acm(redis_url: str, prefix: str) -> AsyncIterator[AccessControlManager]:
    manager = AccessControlManager(redis_url, audit_key=KEY1, prefix=prefix)
    try:
        yield manager
    finally:
        await manager.close()


@pytest.fixture
def kq(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KITIUM_QUEUE_AUDIT_KEY", KEY2)
    monkeypatch.delenv("KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS", raising=False)
    monkeypatch.delenv("KITIUM_QUEUE_REDIS", raising=False)

    def run(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(main, [*args, "--redis", redis_url, "--prefix", prefix])
        assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
        assert "Traceback" not in result.output + result.stderr
        return result

    return run


# ------------------------------------------------------------------ 1. two spellings
@pytest.mark.parametrize(
    ("entry", "first", "second"),
    [
        (
            {"principal_id": "alice", "queue_pattern": "acme-*", "queuePattern": "*",
             "role": "admin"},
            "queue_pattern", "queuePattern",
        ),
        (
            {"principal_id": "alice", "queuePattern": "*", "queue_pattern": "acme-*",
             "role": "admin"},
            "queuePattern", "queue_pattern",
        ),
        (
            {"principal_id": "alice", "principalId": "mallory", "queue_pattern": "q",
             "role": "viewer"},
            "principal_id", "principalId",
        ),
        (
            {"principal_id": "alice", "queue_pattern": "q",
             "permissions": {"canAddJob": True, "can_add_job": False}},
            "canAddJob", "can_add_job",
        ),
        (
            {"principal_id": "alice", "queue_pattern": "q",
             "permissions": {"can_view_job": False, "view_job": True}},
            "can_view_job", "view_job",
        ),
    ],
)  # fmt: skip
async def test_a_field_given_in_both_spellings_is_refused(
    acm: AccessControlManager, entry: dict[str, Any], first: str, second: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        await acm.grant_access(entry)
    said = str(caught.value)
    assert f"{first!r} and {second!r} name the same field" in said, said
    assert "give one of them" in said
    assert await acm.list_access() == []
    assert await acm.query_audit_log() == []


async def test_one_spelling_of_each_field_still_grants(acm: AccessControlManager) -> None:
    got = await acm.grant_access(
        {"principalId": "alice", "queuePattern": "acme-*", "permissions": {"canAddJob": True}}
    )
    assert (got.principal_id, got.queue_pattern) == ("alice", "acme-*")
    assert await acm.check_access("alice", "acme-orders", "can_add_job")


# ------------------------------------------------------------------ 2. rotated keys
async def _rotated_log(redis_url: str, prefix: str) -> None:
    """Entries signed with KEY1, then (after a key change) with KEY2."""
    old = AccessControlManager(redis_url, audit_key=KEY1, prefix=prefix)
    try:
        await old.grant_access({"principal_id": "alice", "queue_pattern": "q", "role": "viewer"})
        await old.audit_access("alice", "export", "q")
    finally:
        await old.close()
    new = AccessControlManager(redis_url, audit_key=KEY2, audit_previous_keys=[KEY1], prefix=prefix)
    try:
        await new.audit_access("alice", "export", "q2")
        assert (await new.verify_audit_log()).ok
    finally:
        await new.close()


def test_the_cli_verifies_and_trims_a_log_written_across_a_key_change(
    kq: Any, redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_rotated_log(redis_url, prefix))
    # Without the earlier key: not verified, and said how to give it in the CLI's terms.
    out = kq("audit", "verify", code=1)
    assert "chain\tUNVERIFIED\tentries=3" in out.output and "BROKEN" not in out.output
    assert "KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS" in out.output
    assert "--audit-previous-key-file" in out.output
    refused = kq("audit", "trim", "--max-entries", "1", code=1)
    assert "cannot be verified with the keys given" in refused.stderr
    assert "KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS" in refused.stderr
    assert KEY1 not in out.output + out.stderr + refused.output + refused.stderr
    # From a file (one key a line, repeatable)...
    keys = tmp_path / "old-keys"
    keys.write_text(f"\n{KEY1}\n")
    intact = kq("audit", "verify", "--audit-previous-key-file", str(keys))
    assert "chain\tintact\tentries=3\tstart=genesis" in intact.output
    # ...or from the environment, comma-separated.
    monkeypatch.setenv("KITIUM_QUEUE_AUDIT_PREVIOUS_KEYS", f"{secrets.token_hex(16)}, {KEY1}")
    assert "chain\tintact" in kq("audit", "verify").output
    assert "authentic=yes" in kq("audit", "query", "--action", "access.grant").output
    assert "removed 3 entries" in kq("audit", "trim", "--max-entries", "1").output
    assert "chain\tintact\tentries=1\tstart=retention" in kq("audit", "verify").output


def test_a_wrong_key_is_said_to_be_one_not_a_broken_chain(
    kq: Any, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_rotated_log(redis_url, prefix))
    monkeypatch.setenv("KITIUM_QUEUE_AUDIT_KEY", secrets.token_hex(32))
    out = kq("audit", "verify", code=1)
    assert "chain\tWRONG KEY\tentries=3" in out.output and "BROKEN" not in out.output
    assert "no entry verifies with this key" in out.output + out.stderr
    assert len([ln for ln in out.output.splitlines() if ln.startswith("unverifiable")]) == 1
    report = json.loads(kq("audit", "verify", "--json", code=1).output)
    assert report["wrong_key"] is True and len(report["problems"]) == 1
    assert report["first_problem"]["kind"] == "unverifiable"

    # The API says the same.
    async def verify() -> AuditReport:
        wrong = AccessControlManager(redis_url, audit_key=secrets.token_hex(32), prefix=prefix)
        try:
            return await wrong.verify_audit_log()
        finally:
            await wrong.close()

    verdict = asyncio.run(verify())
    assert verdict.wrong_key and not verdict.ok
    assert verdict.first_problem is not None
    assert "no entry verifies with this key" in verdict.first_problem.detail


# ------------------------------------------------------------------ 3. masking
async def test_secrets_in_audit_metadata_never_reach_redis(
    acm: AccessControlManager, redis_url: str, prefix: str
) -> None:
    secret = "S3cr3t-" + secrets.token_hex(8)
    meta = {
        "signing_key": secret + "a",
        "hmac": secret + "b",
        "jwt": secret + "c",
        "otp": secret + "d",
        "pin": secret + "e",
        "card_number": secret + "f",
        "cardNumber": secret + "g",
        "userPIN": secret + "h",
        "dsn": f"postgres://u:{secret}i@h/db",
        "cache": f"redis://user:{secret}j@host:6379/0",
        "headers": [["Authorization", f"Bearer {secret}k"], ["Accept", "text/plain"]],
        "more": [["Cookie", f"sid={secret}l"], ["X-Api-Key", secret + "m"]],
        # ordinary fields stay
        "pinned": True,
        "spinner": "dots",
        "hotplug": 1,
        "url": "https://example.com/docs",
        "owner": "alice@acme.com",
    }
    await acm.audit_access("alice", "export_report", "acme-orders", meta)
    with redis_sync.Redis.from_url(redis_url) as client:
        raw = b"".join(
            b"".join(f.values()) for _, f in client.xrange(f"{prefix}:{{!access}}:audit")
        )
    assert b"S3cr3t-" not in raw
    (entry,) = await acm.query_audit_log()
    got = entry.metadata
    assert entry.authentic
    for name in ("signing_key", "hmac", "jwt", "otp", "pin", "card_number", "cardNumber",
                 "userPIN"):  # fmt: skip
        assert got[name] == "***", name
    assert got["dsn"] == "postgres://***@h/db"
    assert got["cache"] == "redis://***@host:6379/0"
    assert got["headers"] == [["Authorization", "***"], ["Accept", "text/plain"]]
    assert got["more"] == [["Cookie", "***"], ["X-Api-Key", "***"]]
    assert (got["pinned"], got["spinner"], got["hotplug"]) == (True, "dots", 1)
    assert (got["url"], got["owner"]) == ("https://example.com/docs", "alice@acme.com")


# ------------------------------------------------------------------ 4. access check
def test_access_check_exits_1_for_a_principal_without_rights(kq: Any) -> None:
    kq("access", "grant", "alice", "acme-*", "--role", "viewer", "--as", "root")
    none = kq("access", "check", "nobody", "acme-orders", code=1)
    assert "nothing\tvia=-" in none.output and "holds no grant" in none.stderr
    other = json.loads(kq("access", "check", "alice", "globex", "--json", code=1).output)
    assert other["permissions"] == [] and other["allowed"] is False
    some = kq("access", "check", "alice", "acme-orders")
    assert "can_view_job\tvia=acme-*" in some.output
    assert json.loads(kq("access", "check", "alice", "acme-orders", "--json").output)["allowed"]
    kq("access", "check", "alice", "acme-orders", "--permission", "can_add_job", code=1)


def test_a_tenant_config_names_both_spellings_whichever_comes_first() -> None:
    # The tenant helper said "'tenant_id' and 'tenant_id' name the same field" when the
    # snake_case key came second; it now shares the grants' renamed_keys.
    from kitium_queue.features.access.tenants import brief_keys

    for given in ({"tenantId": "a", "tenant_id": "b"}, {"tenant_id": "b", "tenantId": "a"}):
        with pytest.raises(ConfigurationError) as err:
            brief_keys(given)
        said = str(err.value)
        assert "'tenantId'" in said and "'tenant_id'" in said, said


@pytest.mark.parametrize("action", ["tenant.create", "access.grant", "Queue.pause", "audit.x"])
async def test_an_application_entry_may_not_use_the_librarys_action_names(
    acm: AccessControlManager, action: str
) -> None:
    # audit_access could write 'tenant.create', which 'audit query --action tenant.*'
    # could not tell from the library's own entries.
    before = len(await acm.query_audit_log())
    with pytest.raises(ConfigurationError, match="namespace the library writes"):
        await acm.audit_access("alice", action, "acme-orders", {})
    assert len(await acm.query_audit_log()) == before
    await acm.audit_access("alice", "app." + action, "acme-orders", {})
    assert len(await acm.query_audit_log()) == before + 1


# ------------------------------------------------------------------ 5. who changes grants
async def test_a_manager_of_some_queues_cannot_change_grants_inside_acting_as(
    acm: AccessControlManager,
) -> None:
    await acm.grant_access(principal_id="mgr1", queue_pattern="acme-*", role="manager")
    await acm.grant_access(principal_id="acme-admin", queue_pattern="acme-*", role="admin")
    await acm.grant_access(principal_id="bob", queue_pattern="acme-orders", role="viewer")
    before = await acm.list_access()
    with acting_as("mgr1"), pytest.raises(AccessDeniedError) as grant:
        await acm.grant_access(principal_id="mgr1", queue_pattern="*", role="admin")
    with acting_as("mgr1"), pytest.raises(AccessDeniedError) as revoke:
        await acm.revoke_access("bob", "acme-orders")
    with acting_as("acme-admin"), pytest.raises(AccessDeniedError) as local:
        await acm.grant_access(principal_id="acme-admin", queue_pattern="*", role="admin")
    said = str(grant.value)
    assert "'mgr1'" in said and "every queue" in said and "without acting_as" in said, said
    assert (grant.value.permission, grant.value.resource) == ("can_manage_queue", "*")
    assert revoke.value.action == "revoke_access" and revoke.value.resource == "acme-orders"
    assert "it holds it on acme-* only" in str(local.value)
    assert await acm.list_access() == before  # nothing stored, nothing removed
    denied = await acm.query_audit_log(action="access.denied", newest_first=False)
    assert [(e.principal, e.resource, e.metadata["action"]) for e in denied] == [
        ("mgr1", "*", "grant_access"),
        ("mgr1", "acme-orders", "revoke_access"),
        ("acme-admin", "*", "grant_access"),
    ]
    assert not await acm.query_audit_log(principal="mgr1", action="access.grant")


async def test_an_admin_on_every_queue_changes_grants_inside_acting_as(
    acm: AccessControlManager,
) -> None:
    await acm.grant_access(principal_id="root", queue_pattern="*", role="admin")
    with acting_as("root"):
        stored = await acm.grant_access(principal_id="carol", queue_pattern="q", role="admin")
        assert await acm.revoke_access("carol", "q")
    assert stored.granted_by == "root"
    entries = await acm.query_audit_log(principal="root", newest_first=False)
    assert [(e.action, e.resource) for e in entries] == [
        ("access.grant", "q"),
        ("access.revoke", "q"),
    ]


async def test_the_managers_principal_names_the_first_admin(redis_url: str, prefix: str) -> None:
    acm = AccessControlManager(redis_url, audit_key=KEY1, prefix=prefix, principal="platform-admin")
    try:
        stored = await acm.grant_access(
            principal_id="platform-admin", queue_pattern="*", role="admin"
        )
        assert stored.granted_by == "platform-admin"
        [entry] = await acm.query_audit_log(action="access.grant")
        assert entry.principal == "platform-admin"
    finally:
        await acm.close()


@pytest.mark.parametrize("where", ["command", "global"])
def test_the_cli_operator_changes_grants_holding_none(kq: Any, where: str) -> None:
    # ``--as root`` is the shell operator (who holds the audit key) naming themselves:
    # root holds no grant, and the command's --as and the global one count alike.
    def as_root(*args: str) -> Result:
        return kq(*args, "--as", "root") if where == "command" else kq("--as", "root", *args)

    as_root("access", "grant", "alice", "*", "--role", "admin")
    [listed] = json.loads(kq("access", "list", "--json").output)
    assert (listed["principal_id"], listed["granted_by"]) == ("alice", "root")
    assert "revoked" in as_root("access", "revoke", "alice", "*").output
    assert json.loads(kq("access", "list", "--json").output) == []
