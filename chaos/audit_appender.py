"""An audit-log appender process for the ``audit`` chaos scenario.

    python chaos/audit_appender.py URL PREFIX NAME [trim]

Reads the audit key from ``KQ_AUDIT_KEY``. Appends entries (4 at a time, concurrently)
as principal NAME with metadata ``{"seq": k}``, and prints ``ack <seq> <entry id>`` once
each append returned (the entry is in Redis); an append that fails (Redis gone) is
retried after a pause with the same ``seq``. With ``trim`` it applies retention
(``max_entries``) every 300 ms instead. Prints ``ready`` first. Runs until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys


async def append_forever(url: str, prefix: str, name: str) -> None:
    from kitium_queue.features.audit import AuditLog

    log = AuditLog(url, key=os.environ["KQ_AUDIT_KEY"], prefix=prefix)
    print("ready", flush=True)
    seq = 0

    async def one(k: int) -> None:
        while True:
            try:
                entry_id = await log.append(name, "chaos.append", f"res-{k % 7}", "ok", {"seq": k})
            except Exception:
                await asyncio.sleep(0.05)
                continue
            print(f"ack {k} {entry_id}", flush=True)
            return

    while True:
        await asyncio.gather(*(one(seq + i) for i in range(4)))
        seq += 4


async def trim_forever(url: str, prefix: str, keep: int) -> None:
    from kitium_queue.features.audit import AuditLog

    log = AuditLog(url, key=os.environ["KQ_AUDIT_KEY"], prefix=prefix)
    print("ready", flush=True)
    while True:
        try:
            removed = await log.trim(max_entries=keep)
            if removed:
                print(f"trimmed {removed}", flush=True)
        except Exception as exc:
            print(f"trim-error {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        await asyncio.sleep(0.3)


def main() -> None:
    url, prefix, name = sys.argv[1:4]
    if len(sys.argv) > 4 and sys.argv[4] == "trim":
        asyncio.run(trim_forever(url, prefix, int(name)))
    else:
        asyncio.run(append_forever(url, prefix, name))


if __name__ == "__main__":
    main()
