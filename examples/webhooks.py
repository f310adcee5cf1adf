"""Webhooks: signed, guaranteed delivery of job events to an HTTP endpoint.

Webhooks at work: an endpoint subscribed to
``job-completed`` receives each event signed per the Standard Webhooks convention; the
receiver checks it with ``verify_webhook``. Guaranteed delivery writes the event to the
outbox in the same step as the job's completion, so a crash cannot lose it.

    python examples/webhooks.py                                 # memory://
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/webhooks.py
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from kitium_queue import (
    Job,
    JobQueue,
    WebhookConfig,
    WebhookManager,
    generate_secret,
    verify_webhook,
)

SECRET = generate_secret()  # from your configuration in real life; never stored in Redis
received: list[dict[str, Any]] = []


class Receiver(BaseHTTPRequestHandler):  # the receiving side (any framework will do)
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        verify_webhook(body, self.headers, SECRET)  # raises if forged, tampered or stale
        received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


server = HTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()

queue = JobQueue("orders", redis=os.environ.get("KQ_REDIS_URL", "").strip() or "memory://",
                 prefix=f"kq-examples-{os.getpid()}")
webhooks = WebhookManager(queue, allow_networks=["127.0.0.0/8"])  # loopback: demo only


@queue.process("charge")
async def charge(job: Job) -> str:
    return "charged"


async def main() -> None:
    hook = await webhooks.register_webhook(WebhookConfig(
        url=f"http://127.0.0.1:{server.server_port}/hooks", secret=SECRET,
        events=["job-completed"], delivery_strategy="guaranteed"))
    await queue.start()
    await queue.add_jobs([("charge", {"order": n}) for n in range(3)])
    while len(received) < 3:
        await asyncio.sleep(0.02)
    print(f"endpoint {hook.id}: {len(received)} signed job-completed events verified")
    print(f"event types: {sorted({e.get('type', '?') for e in received})}")
    await webhooks.remove_webhook(hook.id)
    await queue.clear(force=True)
    await queue.close()
    server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
