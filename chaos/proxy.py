"""A loopback TCP proxy that can cut, stall, slow and refuse connections (asyncio, own
thread).

    proxy = Proxy(target_port=6380).start()      # listens on 127.0.0.1:<proxy.port>
    proxy.cut()                                  # reset every open connection
    proxy.stall(2.0)                             # forward nothing for 2 s (both ways)
    proxy.set_delay(0.02)                        # deliver every chunk 20 ms late, each way
    proxy.down(); ...; proxy.up()                # refuse connections, then accept again
    proxy.stop()

A delay is latency, not a bandwidth cap: each chunk is delivered ``delay`` seconds after
it arrived, in order, while later chunks keep arriving (a pipelined client sees one
delay per round trip, not one per command). Changing the delay applies to chunks that
arrive from then on (a spike: ``set_delay(0.2)``, then back).

Only 127.0.0.1 is ever bound or dialled. The proxy stops by itself after
``max_lifetime`` seconds, so a run that dies half way cannot leave it behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any

from .infra import free_port

__all__ = ["Proxy"]

HOST = "127.0.0.1"


class Proxy:
    def __init__(
        self, target_port: int, *, port: int | None = None, max_lifetime: float = 900.0
    ) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.max_lifetime = max_lifetime
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="chaos-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()  # one per accepted connection
        self._flowing: asyncio.Event | None = None
        self._stopped = threading.Event()
        self._expiry: asyncio.Task[None] | None = None
        self.connections = 0  # accepted since start
        self.cuts = 0
        self.delay_s = 0.0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    # ------------------------------------------------------------------ control
    def start(self) -> Proxy:
        self.thread.start()
        self._run(self._listen())
        self.loop.call_soon_threadsafe(self.loop.call_later, self.max_lifetime, self._expire)
        return self

    def cut(self) -> int:
        """Reset every open connection (clients see a connection error at once)."""
        return self._run(self._cut())

    def stall(self, seconds: float | None) -> None:
        """Stop forwarding in both directions (connections stay open); resume after
        ``seconds`` or on ``resume()``."""
        self._run(self._set_flow(False, seconds))

    def resume(self) -> None:
        self._run(self._set_flow(True, None))

    def set_delay(self, seconds: float) -> None:
        """Deliver what arrives from now on ``seconds`` late, in both directions."""
        self.delay_s = max(0.0, float(seconds))

    def down(self) -> None:
        """Redis unreachable: stop listening (connection refused) and reset every
        open connection."""
        self._run(self._down())

    def up(self) -> None:
        self._run(self._listen())

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        with contextlib.suppress(RuntimeError):
            self._run(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self._stopped.set()

    # ------------------------------------------------------------------ internals
    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def _expire(self) -> None:
        async def shut_then_stop() -> None:
            try:
                await asyncio.wait_for(self._shutdown(), 6)
            finally:
                self.loop.stop()

        self._expiry = self.loop.create_task(shut_then_stop())

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        if self._server is None:
            deadline = time.monotonic() + 5
            while True:
                try:
                    self._server = await asyncio.start_server(self._accept, HOST, self.port)
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._cut()

    async def _cut(self) -> int:
        n = len(self._pairs)
        for a, b in list(self._pairs):
            for w in (a, b):
                transport = w.transport
                if transport is not None:
                    transport.abort()
        self._pairs.clear()
        self.cuts += 1
        return n

    async def _set_flow(self, flowing: bool, seconds: float | None) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
            return
        self._flowing.clear()
        if seconds is not None:
            self.loop.call_later(seconds, self._flowing.set)

    async def _shutdown(self) -> None:
        await self._down()
        if self._flowing is not None:
            self._flowing.set()
        for t in list(self._tasks):
            t.cancel()
        # Let each connection's handler end here (its pumps are cancelled), on a running
        # loop: one left pending when the loop stops is finalised by the garbage
        # collector later, in some other test's time, with an "Exception ignored"
        # warning. Not cancelled: asyncio's stream callback raises on a cancelled one.
        handlers = [t for t in self._handlers if t is not asyncio.current_task()]
        if handlers:
            await asyncio.wait(handlers, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
            me.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
                self._tasks.discard(t)
            self._pairs.discard(pair)
            for w in pair:
                if w.transport is not None:
                    w.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        late: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while True:
                    data = await src.read(65536)
                    if not data:
                        return
                    if not self._flowing.is_set():
                        await self._flowing.wait()
                    if self.delay_s > 0 or (deliver is not None and not late.empty()):
                        # Delivered later by its own task, in order.
                        if deliver is None:
                            deliver = asyncio.ensure_future(self._deliver(late, dst))
                            self._tasks.add(deliver)
                        late.put_nowait((loop.time() + self.delay_s, data))
                        continue
                    dst.write(data)
                    await dst.drain()
        finally:
            if deliver is not None:
                late.put_nowait(None)  # deliver what is queued, then stop
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(deliver), 5)
                self._tasks.discard(deliver)

    @staticmethod
    async def _deliver(
        late: asyncio.Queue[tuple[float, bytes] | None], dst: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while True:
                item = await late.get()
                if item is None:
                    return
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
