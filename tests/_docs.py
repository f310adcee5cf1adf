"""Run the Python examples of ``docs/scale-out.md`` (blocks tagged ``# example: <tag>``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["run_doc_example"]

DOC = Path(__file__).resolve().parents[1] / "docs" / "scale-out.md"


def doc_example(tag: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (code,) = [b for b in blocks if b.startswith(f"# example: {tag}\n")]
    return code


def run_doc_example(tag: str, tmp: Path, **env: str) -> str:
    """Run the example in a fresh interpreter; returns its stdout (fails on error)."""
    script = tmp / f"example_{tag}.py"
    script.write_text(doc_example(tag))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True, text=True, timeout=60, cwd=tmp, env={**os.environ, **env},
    )  # fmt: skip
    assert proc.returncode == 0, f"example {tag!r} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout
