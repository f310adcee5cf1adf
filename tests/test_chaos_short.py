"""The chaos suite's short form (issue 4, items 1-8) inside the normal test run.

Each test runs one scenario of ``chaos/`` with real worker processes and private
``redis-server`` processes on loopback, and fails if any of its checks failed (the
ledger/consistency checker included). The long form and the JSON report:

    .venv/bin/python -m chaos --long            # every scenario, long form
    .venv/bin/python -m chaos --only sigkill    # one scenario, short form
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos import NAMES  # noqa: E402
from chaos.core import run_scenario  # noqa: E402

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", NAMES)
def test_chaos_scenario_short(name: str, tmp_path: Path) -> None:
    result = run_scenario(name, long=False, workdir=tmp_path / name)
    failed = [c for c in result.checks if not c["ok"]]
    print(f"\n{name}: {'PASS' if result.passed else 'FAIL'} in {result.duration_s:.1f} s")
    print(json.dumps(result.figures, indent=1, default=str)[:3000])
    assert result.error is None, result.error
    assert result.checks, "the scenario made no checks"
    assert not failed, json.dumps(failed, indent=1, default=str)[:6000]
