"""Private ``redis-server`` processes for the test suite.

Each :class:`RedisServer` runs its own ``redis-server`` on a free loopback port with a
private data directory, so tests never depend on (or disturb) a Redis on port 6379.

    with RedisServer() as srv:
        client = redis.Redis.from_url(srv.url)

    # durable server for crash/restart tests
    srv = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    srv.kill()       # SIGKILL, as in a crash
    srv.restart()    # same port, same directory: the AOF is replayed
    srv.close()

The executable can be overridden with the ``KQ_REDIS_SERVER`` environment variable.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

__all__ = [
    "RedisServer",
    "RedisServerError",
    "free_port",
    "frozen",
    "redis_server_executable",
    "thaw",
]

_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
    _LIVE.clear()


class RedisServerError(RuntimeError):
    """The redis-server process could not be started or did not become ready."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_executable() -> str:
    """Path of the redis-server binary (``KQ_REDIS_SERVER`` or ``redis-server`` on PATH)."""
    configured = os.environ.get("KQ_REDIS_SERVER")
    if configured:
        return configured
    found = shutil.which("redis-server")
    if found is None:
        for candidate in ("/usr/sbin/redis-server", "/usr/local/sbin/redis-server"):
            if os.access(candidate, os.X_OK):
                return candidate
        raise RedisServerError(
            "redis-server not found on PATH; install it (scripts/test does) or set KQ_REDIS_SERVER"
        )
    return found


def _ping(port: int, timeout: float = 0.5) -> bytes:
    """Send PING over a raw socket and return the first reply line (b'' on no answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
            return data.strip()
    except OSError:
        return b""


def _server_pid(port: int, timeout: float = 2.0) -> int | None:
    """``process_id`` from ``INFO server`` of the server listening on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


class RedisServer:
    """A private redis-server process on 127.0.0.1.

    ``extra_args`` are appended to the base arguments
    ``--port N --bind 127.0.0.1 --save "" --appendonly no --dir <dir>``; since later
    arguments win, they can override those defaults (e.g. ``--appendonly yes``).
    """

    def __init__(
        self,
        *extra_args: str,
        args: Iterable[str] = (),
        port: int | None = None,
        dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
        executable: str | None = None,
    ) -> None:
        self.extra_args: list[str] = [*extra_args, *args]
        self.startup_timeout = startup_timeout
        self.executable = executable or redis_server_executable()
        self._fixed_port = port is not None
        self._port: int | None = port
        if dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="kq-redis-"))
            self._owns_dir = True
        else:
            self._dir = Path(dir)
            self._dir.mkdir(parents=True, exist_ok=True)
            self._owns_dir = False
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("server has not been started yet")
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def dir(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / "redis-server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ping(self) -> bool:
        return self._port is not None and _ping(self._port) == b"+PONG"

    # ------------------------------------------------------------ lifecycle

    def command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        """Start the server (on a fresh free port unless one was given) and wait for PING."""
        if self.is_running():
            raise RedisServerError(f"redis-server already running on port {self.port}")
        attempts = 1 if self._fixed_port else 5
        last_error: RedisServerError | None = None
        for _ in range(attempts):
            if not self._fixed_port:
                self._port = free_port()
            try:
                self._launch()
                return self
            except RedisServerError as exc:
                last_error = exc
                # Another process may have taken the port in between; try another one.
                if "Address already in use" not in str(exc):
                    break
        assert last_error is not None
        raise last_error

    def restart(self) -> RedisServer:
        """Stop if running, then start again on the same port with the same directory."""
        if self._port is None:
            return self.start()
        if self.is_running():
            self.stop()
        self._launch()
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the server and wait for it to exit (SIGKILL after ``timeout``)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        _LIVE.discard(proc)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the server (a crash: no shutdown, no final fsync) and reap it."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        proc.wait(timeout=10)
        _LIVE.discard(proc)
        return proc.returncode

    def close(self) -> None:
        """Stop the server and remove its directory if this object created it.

        A server whose directory goes with it has nothing left to keep, so it is
        SIGKILLed: a SIGTERM waits for Redis's next timer tick (up to 100 ms at the
        default ``hz``), and longer with replicas still catching up. A server in a
        directory given to it is stopped with SIGTERM (its last writes reach the disk)."""
        if self._owns_dir:
            self.kill()
            shutil.rmtree(self._dir, ignore_errors=True)
        else:
            self.stop()

    def __enter__(self) -> RedisServer:
        if not self.is_running():
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
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer port={self._port} dir={str(self._dir)!r} {state}>"

    # ------------------------------------------------------------ internals

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"---- starting: {' '.join(self.command())}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,  # Ctrl-C on the test run must not hit the server
            )
        self._proc = proc
        _LIVE.add(proc)

        deadline = time.monotonic() + self.startup_timeout
        last_reply = b""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                _LIVE.discard(proc)
                raise RedisServerError(
                    f"redis-server exited with code {proc.returncode} during startup "
                    f"on port {self.port}; log tail:\n{self.log_tail()}"
                )
            last_reply = _ping(self.port)
            if last_reply == b"+PONG":
                if _server_pid(self.port) == proc.pid:
                    return
                # Someone else's server answered on this port: ours cannot bind it.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
                _LIVE.discard(proc)
                raise RedisServerError(
                    f"port {self.port} is served by another process "
                    f"(Address already in use); log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)

        proc.kill()
        proc.wait(timeout=10)
        _LIVE.discard(proc)
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING within "
            f"{self.startup_timeout:.0f}s (last reply: {last_reply!r}); log tail:\n"
            f"{self.log_tail()}"
        )


def thaw(srv: RedisServer) -> None:
    """Let a server ``frozen`` stopped run again (a no-op when it runs or is gone)."""
    if srv.pid is not None:
        with contextlib.suppress(OSError):
            os.kill(srv.pid, signal.SIGCONT)


@contextlib.contextmanager
def frozen(srv: RedisServer) -> Iterator[None]:
    """Stop the server's process (SIGSTOP: it keeps its connections, answers nothing)
    for the block, then let it run again."""
    assert srv.pid is not None
    os.kill(srv.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        thaw(srv)
