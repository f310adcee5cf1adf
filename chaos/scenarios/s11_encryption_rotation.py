"""Issue 13: key rotation under worker SIGKILL.

Three workers (4 slots each, lease 1 s, sweep every 250 ms) encrypt every job
(``EncryptionManager(encrypt_all=True)``, keys from environment variables) and work
through a backlog of 20-150 ms jobs (short form: 10-75 ms); the key is rotated from
``k1`` to ``k2`` and, while the workers' leader-only pass re-encrypts the stored jobs,
a random busy worker (the leader among them, at times) is SIGKILLed again and again
and replaced. Every job carries a ``note``, a marker (``PAN-4111-<n>``) its run writes
as its progress and as a log line before its sleep; one job in five fails its first
attempt (``fail_on: [1]``) and completes on its retry (keeping ``le``), one in 25 fails
every attempt and is dead-lettered (keeping ``e`` and ``tb``), the failure texts quoting
the note. So the sealed texts (failure texts ``e``/``le``/``tb``, progress ``pg``, log
lines) are written under ``k1`` and ``k2`` while the pass re-seals them. Checks:
nothing lost (the ledger); the rotation ends; no stored ciphertext is left on ``k1``;
every sealed text stored is under ``k2``; no ciphertext failed to open; no key material
and no marker in clear in Redis (each value read by type, and its ``DUMP``); a process
holding only ``k2`` shows the marker in the progress, the log lines and (for the jobs
that failed) the failure texts of a sample of jobs; no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from typing import Any

import orjson

from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import wait_for
from ._common import closing_checks, stop_fleet, tracebacks, wait_final

QUEUE = "encrot"
#: Every job's note starts with it; it must never be stored in clear.
MARKER = "PAN-4111-"


def _manager(q: Any, keys: dict[str, str], **kw: Any) -> Any:
    from kitium_queue.features.encryption import EncryptionManager, KeyConfig

    return EncryptionManager(q, keys=[KeyConfig(k, v) for k, v in keys.items()],
                             encrypt_all=True, refresh_ms=200, **kw)


def _rotate(url: str, prefix: str, keys: dict[str, str]) -> None:
    from kitium_queue import JobQueue

    async def go() -> None:
        q = JobQueue(QUEUE, redis=url, prefix=prefix)
        try:
            await _manager(q, keys, run_rotation=False).rotate_key("k1", "k2")
        finally:
            await q.close()

    asyncio.run(go())


def _view_with(url: str, prefix: str, keys: dict[str, str],
               ids: list[str]) -> dict[str, dict[str, Any]]:
    """What a process holding only ``keys`` sees of each job of ``ids``: its progress,
    its log lines and its failure texts (``get_job_status``, ``get_job_logs``)."""
    from kitium_queue import JobQueue

    async def go() -> dict[str, dict[str, Any]]:
        q = JobQueue(QUEUE, redis=url, prefix=prefix)
        try:
            await _manager(q, keys, run_rotation=False).initialize()
            seen: dict[str, dict[str, Any]] = {}
            for jid in ids:
                info = await q.get_job_status(jid)
                seen[jid] = {
                    "progress": None if info is None else info.progress,
                    "errors": [] if info is None else [
                        t for t in (info.failed_reason, info.last_error, info.stacktrace)
                        if isinstance(t, str) and t],
                    "logs": await q.get_job_logs(jid),
                }
            return seen
        finally:
            await q.close()

    return asyncio.run(go())


def _sealed_kid(raw: bytes | str) -> str | None:
    """The key id of a sealed text (``(sealed: key <id>) <envelope>``); None when the
    text is not sealed, ``"malformed"`` when it looks sealed but holds no envelope."""
    from kitium_queue.features.encryption.failures import is_sealed_text, parse_sealed

    if not is_sealed_text(raw):
        return None
    env = parse_sealed(raw)
    return str(env.get("kid", "?")) if env is not None else "malformed"


def _sealed_texts(client: Any, keys: QueueKeys) -> dict[str, dict[str, int]]:
    """Per field (``e``, ``le``, ``tb``, ``pg``, ``log``): the sealed texts stored, by
    key id (``pg`` is a JSON string holding the sealed text)."""
    counts: dict[str, dict[str, int]] = {f: {} for f in ("e", "le", "tb", "pg", "log")}

    def count(field: str, raw: bytes | str | None) -> None:
        kid = _sealed_kid(raw) if raw else None
        if kid is not None:
            counts[field][kid] = counts[field].get(kid, 0) + 1

    for key in client.scan_iter(match=f"{keys.base}job:*", count=1000):
        if client.type(key) != b"hash":
            continue
        e, le, tb, pg = client.hmget(key, "e", "le", "tb", "pg")
        count("e", e)
        count("le", le)
        count("tb", tb)
        if pg:
            try:
                value = orjson.loads(pg)
            except orjson.JSONDecodeError:
                value = None
            count("pg", value if isinstance(value, str) else None)
    for key in client.scan_iter(match=f"{keys.base}logs:*", count=1000):
        if client.type(key) == b"list":
            for line in client.lrange(key, 0, -1):
                count("log", line)
    return counts


def _clear_values(client: Any) -> bytes:
    """Every key name and value in Redis as stored (read by type): a ``DUMP`` may be
    LZF-compressed, which can hide a repeated text."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"hash":
            out.extend(b for kv in client.hgetall(key).items() for b in kv)
        elif kind == b"list":
            out.extend(client.lrange(key, 0, -1))
        elif kind == b"set":
            out.extend(client.smembers(key))
        elif kind == b"zset":
            out.extend(client.zrange(key, 0, -1))
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                out.extend(b for kv in fields.items() for b in kv)
    return b"\n".join(out)


def _stored_key_ids(client: Any, keys: QueueKeys) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in client.scan_iter(match=f"{keys.base}job:*", count=1000):
        for field in (b"d", b"r"):
            raw = client.hget(key, field)
            if raw:
                env = orjson.loads(raw)
                kid = env.get("kid", "?") if isinstance(env, dict) else "plain"
                counts[kid] = counts.get(kid, 0) + 1
    return counts


@scenario("encryption-rotation", 9, "Key rotation under worker SIGKILL")
def run(ctx: Context, res: Result) -> None:
    from kitium_queue.features.encryption import generate_key

    keys = {"k1": generate_key(), "k2": generate_key()}
    for k, v in keys.items():
        os.environ[f"KQ_CHAOS_KEY_{k}"] = v  # the workers read their keys from here
    lease_ms, sweep_ms = 1000, 250
    kills = ctx.pick(4, 16)
    rnd = random.Random(9)
    srv = ctx.redis()
    prefix = ctx.prefix()
    qkeys = QueueKeys(QUEUE, prefix)
    client = ctx.client(srv.url)
    producer = ctx.producer(srv.url, QUEUE, prefix)
    _manager(producer.queue, keys, run_rotation=False)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, concurrency=4, lock_duration=lease_ms,
                      stalled_interval=sweep_ms, max_stalled=1000, encrypt="k1,k2")
    for w in [fleet.start() for _ in range(3)]:
        w.wait_ready()

    # Short form: jobs half as long, so the backlog is worked off soon after the kills
    # (the rotation pass still has every stored job to re-encrypt meanwhile).
    ms = ctx.pick((10, 75), (20, 150))

    notes: dict[str, str] = {}  # job id -> its marker
    failing: set[str] = set()  # first attempt fails, the retry completes (keeps ``le``)
    dead: set[str] = set()  # every attempt fails: dead-lettered (keeps ``e``, ``tb``)

    def add(n: int) -> None:
        jobs, kinds = [], []
        for _ in range(n):
            data: dict[str, Any] = {"ms": rnd.randint(*ms),
                                    "note": f"{MARKER}{len(notes) + len(jobs)}"}
            opts: dict[str, Any] = {"remove_on_complete": False}
            r = rnd.random()
            kinds.append("dead" if r < 0.04 else "failing" if r < 0.24 else "")
            if kinds[-1]:
                data["fail_on"] = [1, 2, 3] if kinds[-1] == "dead" else [1]
                opts.update(attempts=3, backoff={"type": "fixed", "delay": 20})
            jobs.append(("work", data, opts))
        ids = producer.add_jobs(jobs)
        for jid, (_, data, _), kind in zip(ids, jobs, kinds, strict=True):
            ctx.ledger.record([jid], expect="dlq" if kind == "dead" else "completed",
                              tag="load")
            notes[jid] = data["note"]
            {"dead": dead, "failing": failing}.get(kind, set()).add(jid)

    add(ctx.pick(300, 3000))
    wait_for(lambda: client.zcard(qkeys.completed) >= 50, 30, what="first completions")
    t_rotate = time.time()
    _rotate(srv.url, prefix, keys)
    killed = 0
    for _ in range(kills):
        add(100)
        busy = wait_for(lambda: [w for w in fleet.live() if len(w.running_jobs()) >= 1], 20,
                        what="a busy worker to kill")
        rnd.choice(busy).kill()
        killed += 1
        fleet.start().wait_ready()
        time.sleep(0.3)

    wait_final(ctx, client, qkeys, ctx.pick(90, 300))
    rot_key = qkeys.extra("enc:rotation")
    done = wait_for(lambda: client.hget(rot_key, "state") == b"done", ctx.pick(90, 300),
                    what="the rotation pass to finish")
    snap, _ = closing_checks(ctx, res, client, qkeys, fleet)
    rot = {k.decode(): v.decode() for k, v in client.hgetall(rot_key).items()}
    counts = _stored_key_ids(client, qkeys)
    dump = b"".join(client.dump(k) or b"" for k in client.scan_iter(count=1000))
    leaked = [k for k, v in keys.items()
              if v.encode() in dump or base64.b64decode(v) in dump]
    clear = _clear_values(client) + dump
    marker_at = clear.find(MARKER.encode())
    texts = _sealed_texts(client, qkeys)
    off_k2 = {f: c for f, c in texts.items() if set(c) - {"k2"}}
    plain = sorted(set(notes) - failing - dead)
    sample = [j for group, k in ((plain, 12), (sorted(failing), 5), (sorted(dead), 3))
              for j in rnd.sample(group, min(k, len(group)))]
    seen = _view_with(srv.url, prefix, {"k2": keys["k2"]}, sample)
    unopened = {
        jid: v for jid, v in seen.items()
        if v["progress"] != {"note": notes[jid]} or notes[jid] not in v["logs"]
        or (jid in failing | dead and not any(notes[jid] in t for t in v["errors"]))
    }
    completed = len(snap.sets["completed"])
    res.figures.update({
        "jobs": len(ctx.ledger), "failing_first_attempt": len(failing),
        "failing_every_attempt": len(dead), "dead_lettered": len(snap.sets["dlq"]),
        "kills": killed,
        "rotation": rot, "stored_ciphertexts_by_key": counts,
        "sealed_texts_by_key": texts, "k2_only_view_sample": len(seen),
        "rotation_s": round(time.time() - t_rotate, 2),
        "completed": completed,
    })
    res.expect("the rotation pass finished", bool(done), rot)
    res.expect("no stored ciphertext left on the old key", "k1" not in counts, counts)
    res.expect("every stored value is a ciphertext under k2", set(counts) == {"k2"}, counts)
    res.expect("no ciphertext failed to open", rot.get("undecryptable") == "0", rot)
    res.expect("every job completed but those failing every attempt (dead-lettered)",
               completed == len(ctx.ledger) - len(dead) and len(snap.sets["dlq"]) == len(dead),
               f"completed {completed}/{len(ctx.ledger) - len(dead)}, "
               f"dead-lettered {len(snap.sets['dlq'])}/{len(dead)}")
    res.expect("no key material in Redis", not leaked, leaked)
    res.expect("no marker in clear in Redis", marker_at < 0,
               clear[max(0, marker_at - 80):marker_at + 40] if marker_at >= 0 else "")
    res.expect("every sealed text stored is under k2", not off_k2, off_k2)
    n_e, n_le, n_tb = (sum(texts[f].values()) for f in ("e", "le", "tb"))
    res.expect("every job's progress and log line stored sealed",
               sum(texts["pg"].values()) == len(notes)
               and sum(texts["log"].values()) >= len(notes),
               {"jobs": len(notes), "pg": texts["pg"], "log": texts["log"]})
    res.expect("the failure texts stored sealed (le of each retried job, e and tb of "
               "each dead-lettered one)",
               n_le >= len(failing) and n_e >= len(dead) and n_tb >= len(dead),
               {"failing": len(failing), "dead": len(dead), "e": texts["e"],
                "le": texts["le"], "tb": texts["tb"]})
    res.expect("a process holding only k2 opens progress, log lines and failure texts",
               bool(seen) and not unopened, dict(list(unopened.items())[:3]))
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
