"""Every Python example of docs/scheduling.md runs as it is (on the memory:// backend)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "scheduling.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(BLOCKS[index])
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, f"example {index} failed:\n{BLOCKS[index]}\n{proc.stderr}"


def test_per_key_limit_example_output(tmp_path: Path) -> None:
    (block,) = [b for b in BLOCKS if 'rate_limit_key="customer-42"' in b]
    script = tmp_path / "example.py"
    script.write_text(block)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    ).stdout
    assert "waiting=10," in out and "completed=20," in out, out
