"""Issue 17: the audit chain under concurrent appenders killed mid-append, a retention
trimmer racing them, and Redis SIGKILLed and restarted from its AOF.

Redis keeps an AOF (``appendfsync always``). Four (long: six) appender processes
(``chaos/audit_appender.py``) append entries four at a time, each recording its
acknowledgements (``ack <seq> <id>``) once the append returned; a fifth process applies
retention (keep the newest 5,000 / 8,000 entries) every 300 ms. Every ~0.7 s one appender
is SIGKILLed — whatever it was doing: building entries, in the script call, between the
call and its acknowledgement — and a replacement starts; halfway (long: twice) Redis is
SIGKILLed and restarted from its AOF while they run.

Checks: the chain verifies from start to end (every entry's MAC valid: nothing forged;
every link intact: nothing half-written, reordered or lost between appenders; the start
accounted for by a retention record; Redis' entry counter equal to the last position);
every acknowledged entry still in the log (unless retention removed it) with the content
its appender wrote; positions contiguous; no traceback in any process's output.
Figures: entries, acknowledged, written but unacknowledged (the appender died between
the write and its acknowledgement), duplicates by (appender, seq) (an append retried
after Redis died with its reply unsent: appends are at-least-once), kills, trims.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..core import Context, Result, scenario
from ..infra import wait_for

APPENDER = Path(__file__).resolve().parent.parent / "audit_appender.py"


class _Proc:
    def __init__(
        self,
        ctx: Context,
        url: str,
        prefix: str,
        key: str,
        name: str,
        *extra: str,
        wait: bool = True,
    ) -> None:
        self.name = name
        self.out = ctx.dir / f"{name}.out"
        self.err = ctx.dir / f"{name}.err"
        env = {**os.environ, "KQ_AUDIT_KEY": key}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(APPENDER), url, prefix, name, *extra],
                stdout=out, stderr=err, env=env,
            )  # fmt: skip
        ctx.callback(self.kill)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        wait_for(lambda: "ready" in self.out.read_text(), 30, what=f"{self.name} ready")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _acks(out: Path) -> list[tuple[int, str]]:
    got = []
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ack" and parts[1].isdigit():
            got.append((int(parts[1]), parts[2]))
    return got


async def _final(url: str, prefix: str, key: str) -> tuple[Any, list[Any]]:
    from kitium_queue.features.audit import AuditLog

    log = AuditLog(url, key=key, prefix=prefix)
    try:
        report = await log.verify()
        entries = await log.query(limit=100_000, newest_first=False)
        return report, entries
    finally:
        await log.close()


@scenario("audit", 17, "audit chain: appenders SIGKILLed mid-append, trimmer, Redis restart")
def run(ctx: Context, res: Result) -> None:
    rnd = random.Random(17)
    srv = ctx.redis(appendfsync="always")
    prefix = ctx.prefix()
    key = secrets.token_hex(32)
    appenders = ctx.pick(4, 6)
    # Short: few enough that retention trims however slow the machine appends.
    keep = ctx.pick(300, 8000)
    duration = ctx.pick(5.0, 40.0)
    restarts_at = [duration / 2] if not ctx.long else [duration / 3, 2 * duration / 3]
    # Started together, then each waited for: all of them are ready before the run.
    procs = [_Proc(ctx, srv.url, prefix, key, f"app{i}", wait=False) for i in range(appenders)]
    every: list[_Proc] = list(procs)
    trimmer = _Proc(ctx, srv.url, prefix, key, str(keep), "trim", wait=False)
    for p in [*procs, trimmer]:
        p.wait_ready()
    kills = restarts = 0
    started = time.monotonic()
    next_kill = started + 0.7
    while (now := time.monotonic()) - started < duration:
        if restarts_at and now - started >= restarts_at[0]:
            restarts_at.pop(0)
            srv.kill()
            time.sleep(0.3)
            srv.restart()
            restarts += 1
        if now >= next_kill:
            victim = rnd.randrange(len(procs))
            procs[victim].kill()
            kills += 1
            # Not waited for: a replacement may itself be killed while it starts.
            fresh = _Proc(ctx, srv.url, prefix, key, f"app{len(every)}", wait=False)
            procs[victim] = fresh
            every.append(fresh)
            next_kill = time.monotonic() + rnd.uniform(0.4, 1.0)
        time.sleep(0.05)
    for p in [*procs, trimmer]:
        p.kill()

    report, entries = asyncio.run(_final(srv.url, prefix, key))
    res.expect(
        "the chain verifies (nothing forged, altered, inserted or removed)",
        report.ok,
        {"start": report.start, "problems": [p.to_dict() for p in report.problems[:5]]},
    )
    ns = [e.n for e in entries]
    res.expect("positions are contiguous", ns == list(range(ns[0], ns[0] + len(ns))) if ns else
               False, {"first": ns[:3], "last": ns[-3:]})  # fmt: skip
    present = {e.id: e for e in entries}
    first_id = entries[0].id if entries else "0-0"

    def after_start(entry_id: str) -> bool:
        a, b = (int(x) for x in entry_id.split("-"))
        c, d = (int(x) for x in first_id.split("-"))
        return (a, b) >= (c, d)

    acked = missing = wrong = 0
    for p in every:
        for seq, entry_id in _acks(p.out):
            acked += 1
            if not after_start(entry_id):
                continue  # removed by retention
            e = present.get(entry_id)
            if e is None:
                missing += 1
            elif e.principal != p.name or e.metadata.get("seq") != seq:
                wrong += 1
    res.expect("every acknowledged entry is in the log as written", missing == 0 and wrong == 0,
               {"missing": missing, "wrong": wrong})  # fmt: skip
    acked_ids = {i for p in every for _, i in _acks(p.out)}
    appended = [e for e in entries if e.action == "chaos.append"]
    seen: dict[tuple[str | None, Any], int] = {}
    for e in appended:
        k = (e.principal, e.metadata.get("seq"))
        seen[k] = seen.get(k, 0) + 1
    tracebacks = [p.name for p in [*every, trimmer] if "Traceback" in p.err.read_text()]
    res.expect("no traceback in any process", not tracebacks, tracebacks)
    trims = sum(1 for line in trimmer.out.read_text().splitlines() if line.startswith("trimmed"))
    res.expect("retention ran while appenders raced it", trims > 0, {"trims": trims})
    res.expect("Redis was restarted and appenders were killed", restarts > 0 and kills >= 5,
               {"restarts": restarts, "kills": kills})  # fmt: skip
    res.figures.update({
        "appenders": appenders, "kills": kills, "redis_restarts": restarts, "trims": trims,
        "entries_in_log": len(entries), "last_n": ns[-1] if ns else 0,
        "acknowledged": acked,
        "written_unacknowledged": sum(1 for e in appended if e.id not in acked_ids),
        "duplicates_by_appender_seq": sum(v - 1 for v in seen.values() if v > 1),
        "start": report.start,
    })  # fmt: skip
