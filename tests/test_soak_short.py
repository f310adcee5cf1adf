"""The soak harness in a short run (``chaos/soak.py``): its faults really happen.

The hour-long soak is run on demand (``chaos/soak.py --minutes 60``); here 15 seconds of
it run inside the suite so that the harness itself cannot rot: worker restarts in
rotation (SIGTERM and SIGKILL), a Redis SIGKILL with an AOF restart, the ledger read
from the event stream, and every check of the judge, including that every planned
restart took place (a fault task that ends early fails the run instead of leaving a
quiet hour behind).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]


def _worker_logs(out: str) -> str:
    """The end of each worker's log of a soak killed mid-run (its work dir, which a
    finished soak removes, is named in its output); its redis-server is stopped."""
    found = re.search(r"^soak: work dir (\S+) redis pid (\d+)$", out, re.MULTILINE)
    if found is None:
        return ""
    with contextlib.suppress(OSError):
        os.kill(int(found.group(2)), signal.SIGKILL)
    parts = []
    for path in sorted(Path(found.group(1)).glob("w*.stderr")):
        lines = path.read_text(errors="replace").splitlines()[-40:]
        parts.append(f"\n--- {path.name}:\n" + "\n".join(lines))
    shutil.rmtree(found.group(1), ignore_errors=True)
    return "".join(parts)


@pytest.mark.timeout(240)
def test_short_soak_runs_its_faults_and_passes(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    # Its own session: a soak killed at the timeout takes its workers and its
    # redis-server with it (a plain kill would leave them running after the test).
    proc = subprocess.Popen(
        [
            sys.executable, str(ROOT / "chaos" / "soak.py"),
            "--minutes", "0.25", "--rate", "200", "--workers", "2",
            "--restart-every", "2", "--sample-every", "1", "--out", str(out),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=220)
    except subprocess.TimeoutExpired:  # say where it stood, not a cut repr
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"soak still running after 220 s:\n{stdout[-4000:]}\n{stderr[-4000:]}"
            f"{_worker_logs(stdout)}"
        )
    tail = (stdout[-3000:], stderr[-3000:])
    assert out.exists(), tail
    result = json.loads(out.read_text())
    assert result["checks"], "the judge made no checks"
    failed = {k: v for k, v in result["checks"].items() if not v}
    assert not failed, (failed, result["chaos_errors"], tail)
    assert proc.returncode == 0, tail
    assert result["restarts_expected_at_least"] >= 2
    signalled = result["restarts_signalled"]
    assert len(signalled) >= result["restarts_expected_at_least"]
    assert {r["signal"] for r in signalled} == {"SIGTERM", "SIGKILL"}
    # Each replacement came back ready, but the last one may still be starting at the end.
    assert len(result["restarts"]) >= max(1, len(signalled) - 1)
    assert result["redis_restart"]["signal"] == "SIGKILL"
    totals = result["totals"]
    assert totals["acknowledged"] > 1000
    assert totals["lost"] == 0 and totals["duplicate_completions"] == 0
