"""A private Sentinel deployment on loopback: a primary, replicas and three sentinels.

    with LocalSentinel() as s:                   # 1 primary + 1 replica + 3 sentinels
        queue = JobQueue("q", redis=s.url)       # redis+sentinel://.../mymaster
        s.kill_primary()                         # SIGKILL: the sentinels promote the replica
        new = s.wait_new_primary(old)

Data nodes are :class:`RedisServer` processes (replicas started with ``--replicaof``);
each sentinel is ``redis-server <conf> --sentinel`` with its own writable config file,
``down-after-milliseconds`` short enough for a failover within a few seconds, and a
quorum of two. ``close()`` stops every process, also after a failed start.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from types import TracebackType

import redis

from _redis import RedisServer, RedisServerError

__all__ = ["LocalSentinel", "SentinelServer"]


class SentinelServer(RedisServer):
    """``redis-server <dir>/sentinel.conf --sentinel`` on a free loopback port."""

    def __init__(
        self,
        service: str,
        primary_port: int,
        *,
        down_after_ms: int,
        failover_timeout_ms: int,
        quorum: int = 2,
    ) -> None:
        super().__init__()
        self.service = service
        self.primary_port = primary_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = quorum

    @property
    def conf_path(self) -> str:
        return str(self.dir / "sentinel.conf")

    def command(self) -> list[str]:
        return [
            self.executable, self.conf_path, "--sentinel",
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--daemonize", "no",
        ]  # fmt: skip

    def _launch(self) -> None:
        if not (self.dir / "sentinel.conf").exists():
            s = self.service
            (self.dir / "sentinel.conf").write_text(
                f"sentinel monitor {s} 127.0.0.1 {self.primary_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {s} {self.down_after_ms}\n"
                f"sentinel failover-timeout {s} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {s} 1\n"
            )
        super()._launch()


class LocalSentinel:
    """One primary, ``replicas`` replicas and ``sentinels`` sentinels for ``service``."""

    def __init__(
        self,
        *,
        service: str = "mymaster",
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 2000,
        extra_args: tuple[str, ...] = (),
        relay: Callable[[int], int] | None = None,
    ) -> None:
        self.service = service
        # ``relay(primary_port)``: the port replicas replicate from instead (a proxy
        # in front of the primary, to slow or cut the replication link).
        self.relay = relay
        self.replicas_count = replicas
        self.sentinels_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.extra_args = extra_args
        self.data: list[RedisServer] = []
        self.sentinels: list[SentinelServer] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> LocalSentinel:
        try:
            # Every data node may become the primary: a full sync it serves starts at
            # once, not after Redis's 5 s default (the ``extra_args`` may say otherwise).
            args = ("--repl-diskless-sync-delay", "0", *self.extra_args)
            primary = RedisServer(*args).start()
            self.data.append(primary)
            source = primary.port if self.relay is None else self.relay(primary.port)
            for _ in range(self.replicas_count):
                self.data.append(
                    RedisServer("--replicaof", "127.0.0.1", str(source), *args).start()
                )
            self._wait(self._replicas_synced, "replicas to sync")
            for _ in range(self.sentinels_count):
                self.sentinels.append(
                    SentinelServer(
                        self.service,
                        primary.port,
                        down_after_ms=self.down_after_ms,
                        failover_timeout_ms=self.failover_timeout_ms,
                    ).start()
                )
            self._wait(self._sentinels_ready, "sentinels to discover each other and the replicas")
        except BaseException:
            self.close()
            raise
        return self

    # ------------------------------------------------------------ queries
    @staticmethod
    def _client(port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def _info(self, node: RedisServer, section: str) -> dict[str, object]:
        c = self._client(node.port)
        try:
            return dict(c.info(section))
        finally:
            c.close()

    def _sentinel_cmd(self, sentinel: SentinelServer, *args: str) -> object:
        c = self._client(sentinel.port)
        try:
            return c.execute_command(*args)
        finally:
            c.close()

    def _replicas_synced(self) -> bool:
        for n in self.data:
            if not n.is_running():
                continue
            info = self._info(n, "replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until every live replica has a working link to its primary and every
        sentinel knows the live replicas (so another failover can pick one)."""
        self._wait(self._replicas_synced, "replicas to sync", timeout)

        def known() -> bool:
            live = len([n for n in self.data if n.is_running()]) - 1
            for s in self.sentinels:
                fields = _pairs(self._sentinel_cmd(s, "SENTINEL", "MASTER", self.service))
                if int(fields.get("num-slaves", 0)) < live:
                    return False
            return True

        self._wait(known, "sentinels to see the replicas", timeout)

    def _sentinels_ready(self) -> bool:
        for s in self.sentinels:
            master = self._sentinel_cmd(s, "SENTINEL", "MASTER", self.service)
            fields = _pairs(master)
            if int(fields.get("num-other-sentinels", 0)) < self.sentinels_count - 1:
                return False
            if int(fields.get("num-slaves", 0)) < self.replicas_count:
                return False
        return True

    def primary_port(self) -> int:
        """The primary's port as the sentinels report it (first live sentinel)."""
        for s in self.sentinels:
            if s.is_running():
                addr = self._sentinel_cmd(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                assert isinstance(addr, (list, tuple))
                return int(addr[1])
        raise RedisServerError("no live sentinel")

    def primary(self) -> RedisServer:
        port = self.primary_port()
        for n in self.data:
            if n.port == port:
                return n
        raise KeyError(port)

    def replicas(self) -> list[RedisServer]:
        p = self.primary()
        return [n for n in self.data if n is not p and n.is_running()]

    # ------------------------------------------------------------ failures
    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns it."""
        p = self.primary()
        p.kill()
        return p

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: a coordinated switch (the old primary is demoted)."""
        self._sentinel_cmd(self.sentinels[0], "SENTINEL", "FAILOVER", self.service)

    def wait_new_primary(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until every sentinel names a live primary other than ``old``, which
        itself reports ``role:master``."""
        result: list[RedisServer] = []

        def switched() -> bool:
            ports = set()
            for s in self.sentinels:
                addr = self._sentinel_cmd(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                assert isinstance(addr, (list, tuple))
                ports.add(int(addr[1]))
            if len(ports) != 1 or old.port in ports:
                return False
            new = self.primary()
            if new.is_running() and self._info(new, "replication").get("role") == "master":
                result.append(new)
                return True
            return False

        self._wait(switched, f"a primary other than port {old.port}", timeout)
        return result[-1]

    def _wait(self, cond: object, what: str, timeout: float = 30.0) -> None:
        assert callable(cond)
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.05)
        raise RedisServerError(f"sentinel: timed out waiting for {what} (last error: {last})")

    def close(self) -> None:
        for n in [*self.sentinels, *self.data]:
            with contextlib.suppress(Exception):
                n.close()
        self.sentinels = []
        self.data = []

    def __enter__(self) -> LocalSentinel:
        if not self.data:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pairs(reply: object) -> dict[str, str]:
    if isinstance(reply, dict):
        return {_s(k): _s(v) for k, v in reply.items()}
    assert isinstance(reply, (list, tuple))
    items = [_s(x) for x in reply]
    return dict(zip(items[0::2], items[1::2], strict=False))


def _s(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
