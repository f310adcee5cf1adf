"""A private Redis Cluster on loopback for the test suite (and the benchmark).

    with LocalCluster(masters=3, replicas=1) as cluster:   # 6 redis-server processes
        queue = JobQueue("q", redis=cluster.url)            # redis+cluster://...
        node = cluster.master_for_key("kq:{q}:wait")        # the RedisServer holding it
        cluster.kill(node)                                  # SIGKILL: replica takes over
        cluster.wait_ok()

Each node is a :class:`RedisServer` started with ``--cluster-enabled yes``, its own
``--cluster-config-file`` and a short ``--cluster-node-timeout`` (failovers take about a
second). With three masters or more the cluster is built by ``redis-cli --cluster create
... --cluster-replicas N --cluster-yes``; ``redis-cli`` refuses fewer than three masters,
so a one- or two-master cluster (the benchmark's baseline) is assembled by hand with
``CLUSTER ADDSLOTS`` / ``MEET`` / ``REPLICATE``. Every process is stopped by
``close()`` (also on a failed start, and at interpreter exit by ``_redis``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from types import TracebackType

import redis

from _redis import RedisServer, RedisServerError

__all__ = ["LocalCluster", "cluster_port", "key_slot", "redis_cli_executable"]

SLOTS = 16384


def redis_cli_executable() -> str:
    """Path of ``redis-cli`` (``KQ_REDIS_CLI`` or on PATH)."""
    configured = os.environ.get("KQ_REDIS_CLI")
    if configured:
        return configured
    found = shutil.which("redis-cli")
    if found is None:
        raise RedisServerError("redis-cli not found on PATH; install redis-tools")
    return found


def cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too; <= 55535."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RedisServerError("no free port pair for a cluster node")


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (hash tags honoured)."""
    from redis.crc import key_slot as _slot

    return int(_slot(key.encode() if isinstance(key, str) else key))


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each, on free loopback ports."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 1000,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("need masters >= 1 and replicas >= 0")
        self.masters_count = masters
        self.replicas_count = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self.nodes: list[RedisServer] = []

    # ------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        """``redis+cluster://`` URL listing every node as a seed."""
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{seeds}"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def client(self, node: RedisServer) -> redis.Redis:
        """A plain (non-cluster) sync client to one node; close it after use."""
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)

    def _cmd(self, node: RedisServer, *args: str | int) -> object:
        c = self.client(node)
        try:
            return c.execute_command(*args)
        finally:
            c.close()

    def info(self, node: RedisServer, section: str) -> dict[str, object]:
        c = self.client(node)
        try:
            return dict(c.info(section))
        finally:
            c.close()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> LocalCluster:
        try:
            total = self.masters_count * (1 + self.replicas_count)
            for _ in range(total):
                self.nodes.append(self._start_node())
            if self.masters_count >= 3:
                self._create_with_redis_cli()
            else:
                self._create_by_hand()
            self.wait_ok(timeout=self.startup_timeout)
            self.wait_replicas_synced(timeout=self.startup_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self) -> RedisServer:
        last: RedisServerError | None = None
        for _ in range(5):
            node = RedisServer(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # Redis 7 defaults, stated so the tests do not depend on them.
                "--cluster-require-full-coverage", "yes",
                # A replica may always take over, however long its link was down.
                "--cluster-replica-validity-factor", "0",
                # A replica's full sync starts at once, not after Redis's 5 s default.
                "--repl-diskless-sync-delay", "0",
                *self.extra_args,
                port=cluster_port(),
            )  # fmt: skip
            try:
                return node.start()
            except RedisServerError as exc:  # port taken in between: try another
                node.close()
                last = exc
        assert last is not None
        raise last

    def _create_with_redis_cli(self) -> None:
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        cmd = [redis_cli_executable(), "--cluster", "create", *addrs]
        cmd += ["--cluster-replicas", str(self.replicas_count), "--cluster-yes"]
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=self.startup_timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed ({proc.returncode}):\n"
                f"{proc.stdout.decode(errors='replace')[-2000:]}"
                f"{proc.stderr.decode(errors='replace')[-2000:]}"
            )

    def _create_by_hand(self) -> None:
        masters = self.nodes[: self.masters_count]
        per = SLOTS // self.masters_count
        for i, m in enumerate(masters):
            lo = i * per
            hi = SLOTS - 1 if i == self.masters_count - 1 else lo + per - 1
            self._cmd(m, "CLUSTER", "ADDSLOTS", *range(lo, hi + 1))  # ADDSLOTSRANGE is 7.0+
        first = self.nodes[0]
        for n in self.nodes[1:]:
            self._cmd(n, "CLUSTER", "MEET", "127.0.0.1", first.port)
        self._wait(
            lambda: all(self._known_nodes(n) == len(self.nodes) for n in self.nodes),
            "every node to know every other",
        )
        replicas = self.nodes[self.masters_count :]
        for i, r in enumerate(replicas):
            master = masters[i % self.masters_count]
            master_id = str(self._cmd(master, "CLUSTER", "MYID"), "utf-8")
            self._cmd(r, "CLUSTER", "REPLICATE", master_id)

    def _known_nodes(self, node: RedisServer) -> int:
        raw = self._cmd(node, "CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return len([line for line in text.splitlines() if line.strip()])

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
        raise RedisServerError(f"cluster: timed out waiting for {what} (last error: {last})")

    def alive(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.is_running()]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and agrees on the
        masters (so a client sees a settled topology after a failover)."""

        def settled() -> bool:
            views = []
            for n in self.alive():
                state = self._cmd(n, "CLUSTER", "INFO")
                text = state.decode() if isinstance(state, bytes) else str(state)
                if "cluster_state:ok" not in text:
                    return False
                views.append(tuple(sorted(p for p, _ in self._masters_view(n))))
            return len(set(views)) == 1 and len(views[0]) == self.masters_count

        self._wait(settled, "cluster_state:ok on every node", timeout)

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        def synced() -> bool:
            for n in self.alive():
                info = self.info(n, "replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            return True

        self._wait(synced, "replicas to finish their initial sync", timeout)

    def _masters_view(self, node: RedisServer) -> list[tuple[int, str]]:
        """(port, node id) of the masters owning slots, as ``node`` sees them."""
        raw = self._cmd(node, "CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 9 and "master" in parts[2] and "fail" not in parts[2]:
                port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                out.append((port, parts[0]))
        return out

    # ------------------------------------------------------------ topology
    def _by_port(self, port: int) -> RedisServer:
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(port)

    def _some_alive(self) -> RedisServer:
        alive = self.alive()
        if not alive:
            raise RedisServerError("no live cluster node")
        return alive[0]

    def masters(self) -> list[RedisServer]:
        """Live masters that own slots."""
        c = self.client(self._some_alive())
        try:
            slots = c.execute_command("CLUSTER", "SLOTS")
        finally:
            c.close()
        ports = {int(entry[2][1]) for entry in slots}
        return [self._by_port(p) for p in sorted(ports)]

    def master_for_slot(self, slot: int) -> RedisServer:
        c = self.client(self._some_alive())
        try:
            for entry in c.execute_command("CLUSTER", "SLOTS"):
                if int(entry[0]) <= slot <= int(entry[1]):
                    return self._by_port(int(entry[2][1]))
        finally:
            c.close()
        raise KeyError(slot)

    def master_for_key(self, key: str) -> RedisServer:
        return self.master_for_slot(key_slot(key))

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        out = []
        for n in self.alive():
            if n is master:
                continue
            info = self.info(n, "replication")
            if info.get("role") == "slave" and int(str(info.get("master_port"))) == master.port:
                out.append(n)
        return out

    def kill(self, node: RedisServer) -> None:
        """SIGKILL a node (a crash: no shutdown, nothing more replicated)."""
        node.kill()

    def failover_to(self, replica: RedisServer) -> None:
        """``CLUSTER FAILOVER`` on ``replica``: a coordinated switch, no write lost."""
        self._cmd(replica, "CLUSTER", "FAILOVER")

    def migrate_slot(
        self, slot: int, to: RedisServer, *, batch: int = 20, pause: float = 0.0
    ) -> int:
        """Move ``slot`` to the master ``to`` as ``redis-cli --cluster reshard`` does:
        IMPORTING / MIGRATING, ``MIGRATE`` its keys ``batch`` at a time (``pause`` s
        between batches: a large slot's keys take a while), then the slot's new owner
        told to every master. Returns the number of keys moved."""
        src = self.master_for_slot(slot)
        if src is to:
            return 0

        def node_id(node: RedisServer) -> str:
            got = self._cmd(node, "CLUSTER", "MYID")
            return got.decode() if isinstance(got, bytes) else str(got)

        src_id, dst_id = node_id(src), node_id(to)
        self._cmd(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        self._cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        c = self.client(src)
        moved = 0
        try:
            while True:
                keys = c.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                c.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                if pause:
                    time.sleep(pause)
        finally:
            c.close()
        for node in (to, src, *[m for m in self.masters() if m is not to and m is not src]):
            self._cmd(node, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved

    def wait_master_change(self, old: RedisServer, slot: int, timeout: float = 20.0) -> RedisServer:
        """Wait until ``slot`` is served by a master other than ``old``; return it."""
        result: list[RedisServer] = []

        def moved() -> bool:
            m = self.master_for_slot(slot)
            if m is not old and m.is_running():
                info = self.info(m, "replication")
                if info.get("role") == "master":
                    result.append(m)
                    return True
            return False

        self._wait(moved, f"slot {slot} to move off port {old.port}", timeout)
        return result[-1]

    def crossslot_errors(self) -> dict[int, object]:
        """Port -> the ``errorstat_CROSSSLOT`` line of each live node that ever answered
        a CROSSSLOT error (a script or command touched keys of several slots)."""
        out: dict[int, object] = {}
        for n in self.alive():
            entry = self.info(n, "errorstats").get("errorstat_CROSSSLOT")
            if entry:
                out[n.port] = entry
        return out

    def used_memory(self) -> int:
        """Sum of ``used_memory`` over the live masters."""
        return sum(int(str(self.info(m, "memory")["used_memory"])) for m in self.masters())

    def close(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.close()
        self.nodes = []

    def __enter__(self) -> LocalCluster:
        if not self.nodes:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LocalCluster masters={self.masters_count} ports={self.ports}>"
