"""Every script in examples/ runs to completion, on memory:// and on a real Redis.

Each example is run as a user would (``python examples/<name>.py`` from the repository
root) in a subprocess: it must exit 0 within the timeout, print the lines listed in
``EXPECTED`` (the outcome it demonstrates), log no traceback, and -- on Redis -- leave
none of its jobs, schedules or streams behind under its key prefix
(``kq-examples-<pid>``, see the examples).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 60

#: Per example, regular expressions that must each match a whole line of its output.
EXPECTED: dict[str, list[str]] = {
    "basic_usage.py": [
        r"Sending email to user@example\.com \(subject: 'Hello'\)",
        r"Job \S+ completed! result=\{'success': True\}",
        r"Job \S+: status=completed attempts=1 result=\{'success': True\}",
    ],
    "scheduling.py": [
        r"declared 'daily-report@0 2 \* \* \*': next run at \d{4}-\d\d-\d\d 02:00:00\.000 UTC",
        r"declared 'heartbeat@every 30000ms': next run at .* UTC",
        r"schedule 'report-preview': runs=2 finished=True next=never",
        r"schedule 'heartbeat-fast': runs=3 finished=True next=never",
        r"preview reports: 2, fast heartbeats: 3",
    ],
    "retry_logic.py": [
        r"exponential: job \S+ -> completed after 5 attempt\(s\); delays between attempts: .*",
        r"fixed: job \S+ -> dlq after 3 attempt\(s\); delays between attempts: .*",
        r"fixed: failed_reason='UpstreamError: HTTP 503 from https://api\.example\.com/legacy'",
        r"custom: job \S+ -> completed after 3 attempt\(s\); delays between attempts: .*",
    ],
    "job_tracking.py": [
        # Taken while the job runs; "completed" only if the machine stalled the script.
        r"Status of job \S+: (active|completed), progress \d+%, attempt 1/3",
        r"Progress: job \S+ at 100%",
        r"Final status of job \S+: name=big-task status=completed progress=100 "
        r"attempts=1/3 result=\{'imported': 1000\} took=\d+ ms",
        r"  log: step 5: 1000 rows imported",
        r"  stats: active=0 waiting=0 delayed=0 completed=4 failed=0 dlq=0 .*",
    ],
    "dlq_handling.py": [
        r"ALERT: job \S+ \(charge-card\) moved to the DLQ: "
        r"NonRetryableError: invalid card number for order A-1003",
        r"Job \S+ dead-lettered, reason: GatewayUnavailable: payment gateway timed out",
        r"4 jobs in the DLQ:",
        r"Removed job \S+ \(order A-1003\)",
        r"Replayed 3 jobs",
        r"DLQ now holds 0 jobs; 3 completed",
    ],
    "typed_processor.py": [
        r"typed job \S+: result=\{'sent_to': 'user@example\.com'\}",
        r"queue 'typed-emails' from QueueConfig: max_attempts=3",
    ],
    "fifo_groups.py": [
        r"customer-A: \['A-1', 'A-2', 'A-3'\]",
        r"customer-B: \['B-1', 'B-2', 'B-3'\]",
        r"customer-C paused=True waiting=3 jobs",
        r"customer-C: \['C-1', 'C-2', 'C-3'\]",
    ],
    "effectively_once.py": [
        r"same job for a repeated key: True",
        r"after completion: same job=True, charges made=1",
        r"result by key \(stored\): \{'receipt': 'rcpt-1001', 'amount': 25\}",
    ],
    "circuit_breaker.py": [
        r"breaker payments-api: open after 5 failures",
        r"held charge: status=pending attempts=0; other jobs ran: 3",
        r"inline call refused: breaker payments-api is open",
        r"breaker closed; 20 held charges completed",
    ],
    "payload_encryption.py": [
        r"stored data holds the card number: False",
        r"result read back in this process: \{'charged': '\*\*\*\*1111'\}",
        r"rotation done: 2 values moved to key 2026",
    ],
    "workflows.py": [
        r"order-1001: completed, steps \{'validate': 'completed', 'charge': 'completed', "
        r"'ship': 'completed', 'notify': 'completed', 'archive': 'completed', "
        r"'audit': 'completed'\}",
        r"archive read the results of: \['notify', 'ship'\]",
        r"order-1002: failed at step 'charge'; cancelled: \['archive', 'notify', 'ship'\]",
        r"steps of order-1002 that ran: \['order-1002:charge', 'order-1002:validate'\]",
    ],
    "tenancy.py": [
        r"refused: tenant globex is at its max_queue_size of 20",
        r"globex's 20 jobs all started after \d+ of acme's 300 "
        r"\(acme: max_concurrency 3, ran at most 3 at once\)",
        r"acme usage: queued=\d+ active=[0-3] completed=\d+ \(every job counted once: True\)",
        r"audited: platform-admin tenant.create tenant:acme, "
        r"platform-admin tenant.create tenant:globex",
    ],
    "regions.py": [
        r"pinned job id: @eu-west-1:\.\.\.",
        r"copy in ap-southeast-1: waiting",
        r"failover: us-east-1 -> eu-west-1, epoch 2",
        r"and back: eu-west-1 -> us-east-1, epoch 3",
        r"orders run once each: True",
        r"  us-east-1: primary, epoch 3, healthy=True",
    ],
    "enterprise_setup.py": [
        r"same job for a repeated order: True",
        r"stored data holds the card token: False",
        r"order completed: \{'order_id': 'order-123', 'payment_id': 'pay-order-123'\}; "
        r"charges made: 1",
        r"workflow completed: ship -> \{'tracking': 'TRK-order-123'\}",
        r"webhooks verified: 4 signed job-completed events",
        r"breaker stripe-payment: closed",
        r"acme-corp's global job placed in: @eu-west-1",
        r"refused in us-east-1: RegionNotAllowedError",
    ],
    "webhooks.py": [
        r"endpoint wh_\w+: 3 signed job-completed events verified",
        r"event types: \['job-completed'\]",
    ],
}

#: Keys an example may leave behind on purpose (JobQueue.clear keeps them): idempotency
#: windows and what they keep (they expire with the window), and what features hold that
#: is configuration or history rather than jobs -- webhook deliveries and the outbox
#: they are read from, a breaker's log and window, encryption key ids and rotation
#: records, the tenants (their registry, and the copies of their quotas in a queue),
#: grants and the audit log, a region's record of its epoch and the copies it holds (rg).
WINDOW_KEYS = re.compile(
    r".*\}:(idem-r:|idem-x:|idem-x$|outbox$|wh:|cb:|enc(:|$)|tn:|tenants(:queues)?$"
    r"|grants:|principals$|audit$|rg(:|$))"
)


def test_every_example_has_expectations() -> None:
    """A new example must say here what it prints, so that a broken one fails."""
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


def test_examples_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for name in EXPECTED:
        assert f"({name})" in readme, f"examples/README.md does not link {name}"


def run_example(name: str, redis_url: str | None) -> tuple[int, str, str, int]:
    """Run one example like a user; returns (exit code, stdout, stderr, pid)."""
    env = {k: v for k, v in os.environ.items() if k != "KQ_REDIS_URL"}
    if redis_url is not None:
        env["KQ_REDIS_URL"] = redis_url
    proc = subprocess.Popen(
        [sys.executable, str(Path("examples") / name)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(
            f"{name} did not finish within {TIMEOUT_S} s\n--- stdout\n{out}\n--- stderr\n{err}"
        )
    return proc.returncode, out, err, proc.pid


def check_output(name: str, code: int, out: str, err: str) -> None:
    report = f"--- stdout\n{out}\n--- stderr\n{err}"
    assert code == 0, f"{name} exited with {code}\n{report}"
    for pattern in EXPECTED[name]:
        found = re.search(f"^{pattern}$", out, re.M)
        assert found, f"{name}: no line matches {pattern!r}\n{report}"
    # Handlers that raise are logged, not propagated: a traceback means a broken example.
    assert "Traceback" not in err, f"{name} logged a traceback\n{report}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_on_memory(name: str) -> None:
    code, out, err, _ = run_example(name, None)
    check_output(name, code, out, err)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_on_redis(name: str, redis_url: str) -> None:
    import redis

    code, out, err, pid = run_example(name, redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"kq-examples-{pid}:*", count=1000))
        # clear() deliberately keeps the id and fencing-token counters (and idempotency
        # markers expire on their own): plain strings. Jobs, state sets, streams and
        # schedules are other types and must be gone.
        left = {k.decode(): client.type(k).decode() for k in keys}
        if keys:
            client.delete(*keys)
    finally:
        client.close()
    check_output(name, code, out, err)
    left = {k: t for k, t in left.items() if not WINDOW_KEYS.match(k)}
    assert all(t == "string" for t in left.values()), f"{name} left keys behind: {left}"
