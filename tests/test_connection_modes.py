"""Connection modes and what their mistakes are called, against a private
``redis-server`` that listens on a plain port and on a TLS port (``--tls-port``), with
a CA and certificates made for the test by the openssl CLI.

* A scheme that does not match the port: ``redis://`` to the TLS port (the server
  resets the plain-text connection while it opens) and ``rediss://`` to the plain port
  (no TLS handshake answer) are said to be about TLS, with the scheme to use.
* A certificate the handshake refuses (signed by a CA the client does not trust, made
  for another host name) is a ``TLSConfigurationError`` (a ``ConfigurationError`` and a
  ``ConnectionUnavailableError``) saying which setting to change (``ssl_ca_certs``,
  ``ssl_check_hostname``), never "check that the server runs"; ``kitium-queue health``
  exits 3 (unreachable). No password of the setting appears in any of these messages.
* A TLS file that disappears while a process runs is named in the error of a pool's
  new connection (what a running worker logs), asyncio and blocking pools alike.
* ``describe()``, ``health`` and errors show the database given as ``?db=N`` (the only
  place a ``unix://`` URL has for it), and nothing else of the query string.
* A Redis user that may not write its worker's heartbeat record gets the library's
  permission wording, once a minute at most, without a traceback.
* A refused ``CONFIG GET`` (a user made by ``acl redis-rules``) is not sent again by
  the process on that connection: one ``ACL LOG`` entry per ``health`` run, one per
  process of repeated ``health_check(server_config=True)``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from _redis import RedisServer, free_port
from helpers import health_cli
from kitium_queue import (
    ConfigurationError,
    ConnectionUnavailableError,
    JobQueue,
)
from kitium_queue.connection import ConnectionFactory
from kitium_queue.connerrors import TLSConfigurationError
from kitium_queue.features.access.redisacl import redis_acl_rules
from kitium_queue.pools import ConnectFailedError
from kitium_queue.presence import Presence
from kitium_queue.redact import redact_url

pytestmark = pytest.mark.redis_only

SECRET = f"kq-tls-{uuid.uuid4().hex[:10]}"


@dataclass
class Certs:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, an unrelated CA, and a server certificate the first signs for the name
    ``localhost`` only (so ``127.0.0.1`` is another host name)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    d = tmp_path_factory.mktemp("tls-modes")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
                 "-days", "2", "-subj", f"/CN=kitium-queue modes {name}",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj",
             "/CN=localhost", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text(
        "subjectAltName=DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid:always\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf",
             cwd=d)  # fmt: skip
    return Certs(d / "ca.crt", d / "other-ca.crt", d / "server.crt", d / "server.key")


@dataclass
class Server:
    srv: RedisServer
    tls_port: int
    certs: Certs

    @property
    def plain_port(self) -> int:
        return self.srv.port

    def tls_url(self, host: str = "localhost", ca: Path | None = None, extra: str = "") -> str:
        ca = self.certs.ca if ca is None else ca
        return f"rediss://{host}:{self.tls_port}/0?ssl_ca_certs={ca}{extra}"


@pytest.fixture(scope="module")
def server(certs: Certs) -> Iterator[Server]:
    """A redis-server on a plain port (its readiness check, the admin) and a TLS port."""
    tls_port = free_port()
    srv = RedisServer(
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs.cert),
        "--tls-key-file", str(certs.key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "no",
    ).start()  # fmt: skip
    try:
        yield Server(srv, tls_port, certs)
    finally:
        srv.close()


@pytest.fixture
def admin(server: Server) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis(port=server.plain_port)
    client.flushall()
    client.execute_command("ACL", "LOG", "RESET")
    try:
        yield client
    finally:
        for user in client.acl_users():
            if user != "default":
                client.acl_deluser(user)
        client.close()


async def _add_job_error(redis: Any) -> BaseException:
    """The error ``add_job`` raises on a queue with that ``redis=`` setting."""
    q = JobQueue("modes", redis=redis)
    try:
        t0 = time.monotonic()
        with pytest.raises((ConnectionUnavailableError, ConfigurationError)) as info:
            await q.add_job("n", {})
        assert time.monotonic() - t0 < 15
        return info.value
    finally:
        await asyncio.wait_for(q.close(), 10)


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, text


# ------------------------------------------------------------------ scheme mismatches
async def test_a_plain_url_to_the_tls_port_names_tls(server: Server, admin: Any) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{server.tls_port}/0"
    err = await _add_job_error(url)
    text = str(err)
    assert isinstance(err, ConnectionUnavailableError), text
    assert "while it was being opened" in text and "expects TLS" in text, text
    assert "rediss://" in text and "during a call" not in text, text
    # What a running worker logs: the pool's own error says the same.
    f = ConnectionFactory(url)
    client = f.client()
    try:
        with pytest.raises(ConnectFailedError) as info:
            await client.ping()
    finally:
        await client.aclose()
    logged = f.redact(info.value)
    assert "expects TLS" in logged and "rediss://" in logged, logged
    _no_secret(text, logged)


async def test_a_tls_url_to_the_plain_port_names_tls(server: Server, admin: Any) -> None:
    url = f"rediss://:{SECRET}@127.0.0.1:{server.plain_port}/0?socket_connect_timeout=1"
    err = await _add_job_error(url)
    text = str(err)
    assert isinstance(err, ConnectionUnavailableError), text
    assert "never answers the TLS handshake" in text and "redis://" in text, text
    # A longer socket_connect_timeout ends in the queue's own 10 s deadline instead.
    later = ConnectionFactory(url).error(asyncio.TimeoutError(), "q", timeout_s=10)
    assert later is not None and "use redis:// there" in str(later), later
    # Without TLS, that deadline still suggests rediss:// (as before).
    plain = ConnectionFactory("redis://127.0.0.1:1/0").error(asyncio.TimeoutError(), "q")
    assert plain is not None and "expects TLS (rediss://)" in str(plain), plain
    _no_secret(text)


# ------------------------------------------------------------------ certificates
def _is_tls_configuration(err: BaseException, *needles: str) -> str:
    text = str(err)
    assert isinstance(err, TLSConfigurationError), (type(err), text)
    assert isinstance(err, ConfigurationError) and isinstance(err, ConnectionUnavailableError)
    assert "TLS configuration problem, not an outage" in text, text
    assert "server is running" not in text and "server runs" not in text, text
    for needle in needles:
        assert needle in text, text
    assert len(text) < 600, text
    _no_secret(text)
    return text


async def test_an_untrusted_certificate_names_ssl_ca_certs(
    server: Server, admin: Any, tmp_path: Path
) -> None:
    url = server.tls_url(ca=server.certs.other_ca).replace("://", f"://:{SECRET}@", 1)
    err = await _add_job_error(url)
    _is_tls_configuration(err, "certificate verify failed", "ssl_ca_certs")
    # The dict form (system CAs: tls=True) says the same.
    err = await _add_job_error({"host": "localhost", "port": server.tls_port, "tls": True})
    _is_tls_configuration(err, "ssl_ca_certs", "tls={'ca_certs'")
    # A running worker's pool connection (what its outage log quotes).
    f = ConnectionFactory(url)
    client = f.client()
    try:
        with pytest.raises(ConnectFailedError) as info:
            await client.ping()
    finally:
        await client.aclose()
    logged = f.redact(info.value)
    assert "ssl_ca_certs" in logged and "server runs" not in logged, logged
    _no_secret(logged)


async def test_a_certificate_for_another_host_names_ssl_check_hostname(
    server: Server, admin: Any
) -> None:
    err = await _add_job_error(server.tls_url(host="127.0.0.1"))
    _is_tls_configuration(err, "mismatch", "ssl_check_hostname=false", "host name")
    # The remedy it names works.
    q = JobQueue("modes", redis=server.tls_url(host="127.0.0.1", extra="&ssl_check_hostname=false"))
    try:
        await q.add_job("n", {})
    finally:
        await q.close()


async def test_health_calls_a_refused_certificate_unreachable(
    server: Server, admin: Any, tmp_path: Path
) -> None:
    url = server.tls_url(ca=server.certs.other_ca)
    code, report = await health_cli(tmp_path, url, "modes")
    assert code == 3, report
    assert report["error"].startswith("TLSConfigurationError: "), report
    assert "ssl_ca_certs" in report["error"], report


# ------------------------------------------------------------------ TLS files
async def test_a_tls_file_gone_while_running_is_named(server: Server, tmp_path: Path) -> None:
    """The CA file is read each time a connection opens: once it is gone, a pool's new
    connection (a worker reconnecting) names it, instead of "Error 2 ... No such file
    or directory ... check that the server runs"."""
    ca = tmp_path / "ca-copy.pem"
    shutil.copy(server.certs.ca, ca)
    f = ConnectionFactory(server.tls_url(ca=ca))
    client = f.client()
    try:
        await client.ping()  # the right CA and host name connect while the file is there
    finally:
        await client.aclose()
    ca.unlink()
    client = f.client()
    try:
        with pytest.raises(ConnectFailedError) as info:
            await client.ping()
    finally:
        await client.aclose()
    logged = f.redact(info.value)
    assert f"ssl_ca_certs={str(ca)!r}" in logged and "do not exist" in logged, logged
    assert "server runs" not in logged, logged
    pool = f.sync_pool(reply_timeout_s=5)
    with pytest.raises(ConnectFailedError) as sync_info:
        redis_sync.Redis(connection_pool=pool).ping()
    pool.disconnect()
    assert f"ssl_ca_certs={str(ca)!r}" in str(sync_info.value), sync_info.value
    translated = f.error(info.value, "modes")
    assert isinstance(translated, TLSConfigurationError), translated
    assert str(ca) in str(translated)


# ------------------------------------------------------------------ the database shown
def test_redact_url_keeps_only_the_db_of_a_query() -> None:
    table = {
        "redis://h:1/0?db=9": "redis://h:1/0?db=9",
        "unix:///tmp/r.sock?password=pw&db=5": "unix:///tmp/r.sock?db=5",
        "unix://:pw@/tmp/r.sock?db=6&password=pw": "unix://***@/tmp/r.sock?db=6",
        "redis://h/0?token=pw&socket_timeout=1": "redis://h/0",
        "redis://h/0?db=9x": "redis://h/0",  # not a number: dropped, never guessed
        "redis://h/0?x=1#db=9": "redis://h/0",  # a fragment is no query
        "redis://h/0?db=1&db=2": "redis://h/0?db=1",  # the first, as redis-py reads it
        "see redis://u:pw@h:1/0?password=pw&db=3 here": "see redis://***@h:1/0?db=3 here",
    }
    for given, shown in table.items():
        assert redact_url(given) == shown, given
    # A password that is also the db's value: masked first, and the db goes with it.
    assert "9" not in redact_url("redis://:9@h/0?db=9", secrets=["9"]).split("@")[1]


def test_describe_names_the_database_of_every_form() -> None:
    assert ConnectionFactory("redis://h:1?db=9").describe() == "redis://h:1?db=9"
    assert ConnectionFactory(f"unix://:{SECRET}@/tmp/r.sock?db=7").describe() == (
        "unix://***@/tmp/r.sock?db=7"
    )
    assert ConnectionFactory({"host": "h", "port": 1, "db": 4}).describe() == "h:1/4"
    assert ConnectionFactory({"host": "h", "port": 1}).describe() == "h:1"
    assert ConnectionFactory({"unix_socket_path": "/r.sock", "db": 2}).describe() == (
        "unix:/r.sock?db=2"
    )


async def test_health_and_errors_name_the_db_of_the_query(server: Server, admin: Any) -> None:
    port = server.plain_port
    q = JobQueue("modes", redis=f"redis://127.0.0.1:{port}?db=9")
    try:
        await q.add_job("n", {})
        assert admin.dbsize() == 0  # not in db 0
        with redis_sync.Redis(port=port, db=9) as db9:
            assert db9.dbsize() > 0
        health = await q.health_check()
        assert health.healthy and health.backend == f"redis://127.0.0.1:{port}?db=9"
    finally:
        await q.close()
    err = await _add_job_error(f"redis://127.0.0.1:{port}?db=99")
    assert isinstance(err, ConfigurationError)
    assert "has no such database (db 99;" in str(err) and "?db=99" in str(err), err
    assert "host:***" not in str(err), err  # the example URL is not taken for a password


# ------------------------------------------------------------------ heartbeat refused
async def test_a_refused_heartbeat_is_worded_once_a_minute(
    server: Server, admin: Any, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    admin.execute_command("ACL", "SETUSER", "no-keys", "on", f">{SECRET}", "resetkeys", "+@all")
    q = JobQueue("modes", redis=f"redis://127.0.0.1:{server.plain_port}/0")
    q.process("secret-job-name", lambda job: None)
    user = aioredis.Redis(
        host="127.0.0.1", port=server.plain_port, username="no-keys", password=SECRET
    )
    worker = SimpleNamespace(
        id="modes-worker", concurrency=1, leases=SimpleNamespace(runs={}), processed=0, queue=q
    )
    presence = Presence(q.keys, user, worker, q.processors)
    clock = [1000.0]
    monkeypatch.setattr("kitium_queue.presence.time.monotonic", lambda: clock[0])
    try:
        with caplog.at_level(logging.INFO, logger="kitium_queue.presence"):
            for _ in range(3):
                await presence._try_beat()
                clock[0] += 5
            records = [r for r in caplog.records if r.name == "kitium_queue.presence"]
            assert len(records) == 1, [r.getMessage() for r in records]
            clock[0] += 60
            await presence._try_beat()
            records = [r for r in caplog.records if r.name == "kitium_queue.presence"]
    finally:
        await user.aclose()
        await q.close()
    assert len(records) == 2, [r.getMessage() for r in records]
    for record in records:
        text = record.getMessage()
        assert record.levelno == logging.ERROR and record.exc_info is None, text
        assert "heartbeat refused" in text and "lack of permission" in text, text
        assert "acl redis-rules" in text and q.keys.worker("modes-worker") in text, text
        assert "secret-job-name" not in text and "HSET" not in text, text  # no arguments


# ------------------------------------------------------------------ CONFIG GET
async def test_a_refused_config_get_is_not_sent_again(
    server: Server, admin: Any, tmp_path: Path
) -> None:
    rules = redis_acl_rules("modes-health", ["modes"])
    admin.execute_command("ACL", "SETUSER", *rules.setuser_args(SECRET))
    url = f"redis://modes-health:{SECRET}@127.0.0.1:{server.plain_port}/0"

    def refusals() -> int:
        log = admin.acl_log()
        return sum(int(e["count"]) for e in log if e.get("object") == "config|get")

    code, report = await health_cli(tmp_path, url, "modes")
    assert code == 0, report  # ready: persistence from INFO
    assert refusals() == 1  # readiness reads the settings twice: refused once
    admin.execute_command("ACL", "LOG", "RESET")
    q = JobQueue("modes", redis=url)
    try:
        for _ in range(3):
            health = await q.queries.health_check(lambda: False, server_config=True)
            assert health.healthy and health.memory is not None, health
            assert health.memory.persistence in ("none", "rdb", "aof"), health.memory
    finally:
        await q.close()
    assert refusals() == 1
    # A user that may run it still gets the settings (nothing remembered for it).
    q = JobQueue("modes", redis=f"redis://127.0.0.1:{server.plain_port}/0")
    try:
        admin.config_set("save", "3600 1")
        health = await q.queries.health_check(lambda: False, server_config=True)
        assert health.memory is not None and "rdb" in health.memory.persistence, health
    finally:
        admin.config_set("save", "")
        await q.close()
