"""Every Python example of docs/webhooks.md runs as it is (on the memory:// backend)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "webhooks.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(BLOCKS[index])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, f"example {index} failed:\n{BLOCKS[index]}\n{proc.stderr}"
    if "charged" in BLOCKS[index]:  # the quick start: a verified job-completed request
        assert '"type":"job-completed"' in proc.stdout
    if "replay_dlq" in BLOCKS[index]:
        assert proc.stdout.startswith("dead 3 ") and "replayed 1" in proc.stdout
