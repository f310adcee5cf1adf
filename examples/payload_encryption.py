"""Payload encryption: card data stored encrypted, processed in plaintext, keys rotated.

Payload encryption at work: jobs added with ``encrypted=True``
are stored as AES-256-GCM envelopes bound to their queue, id and name (Redis never sees
the card number, nor the keys); the processor sees plaintext; after ``rotate_key`` the
stored data and results move to the new key.

    python examples/payload_encryption.py                                 # memory://
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/payload_encryption.py
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kitium_queue import Job, JobQueue
from kitium_queue.features.encryption import EncryptionManager, KeyConfig, generate_key

# Keys come from your secrets store; here from the environment, made up for the demo.
os.environ.setdefault("ORDERS_KEY_2025", generate_key())
os.environ.setdefault("ORDERS_KEY_2026", generate_key())

queue = JobQueue("orders", redis=os.environ.get("KQ_REDIS_URL", "").strip() or "memory://",
                 prefix=f"kq-examples-{os.getpid()}")
enc = EncryptionManager(queue, keys=[KeyConfig.from_env("ORDERS_KEY_2025", "2025")],
                        rotation_grace_ms=0)


@queue.process("charge")
async def charge(job: Job) -> dict[str, Any]:
    return {"charged": "****" + job.data["card"][-4:]}  # the processor sees plaintext


async def main() -> None:
    await enc.initialize()
    job_id = await queue.add_job("charge", {"card": "4111111111111111"}, encrypted=True)
    stored = await (await queue.client()).hget(queue.keys.job(job_id), "d")
    print(f"stored data holds the card number: {b'4111111111111111' in stored}")
    await queue.start()
    while (info := await queue.get_job_status(job_id)) is None or info.status.value != "completed":
        await asyncio.sleep(0.01)
    print(f"result read back in this process: {info.result}")
    await enc.add_key(KeyConfig.from_env("ORDERS_KEY_2026", "2026"))
    await enc.rotate_key("2025", "2026")
    status = await enc.run_rotation()
    print(f"rotation {status.state}: {status.reencrypted} values moved to key 2026")
    await queue.clear(force=True)
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
