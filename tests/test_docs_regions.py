"""Every Python example of docs/multi-region.md runs as it is, on memory:// regions (a
fragment that uses ``regions`` runs inside a script that initialises one)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from _docs import ROOT, python_blocks, run_snippet

DOC = ROOT / "docs" / "multi-region.md"
BLOCKS = python_blocks(DOC)

WRAPPER = """\
import asyncio
import uuid

from kitium_queue import GlobalQueueManager


async def main() -> None:
    u = uuid.uuid4().hex
    regions = GlobalQueueManager()
    await regions.initialize({{"regions": [
        {{"region": "us-east-1", "redis": f"memory://us-{{u}}", "is_primary": True}},
        {{"region": "eu-west-1", "redis": f"memory://eu-{{u}}"}},
        {{"region": "ap-southeast-1", "redis": f"memory://ap-{{u}}"}},
    ]}})
{body}
    await regions.close()


asyncio.run(main())
"""


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index: int, tmp_path: Path) -> None:
    code = BLOCKS[index]
    if "asyncio.run(" not in code and "regions." in code:
        code = WRAPPER.format(body=textwrap.indent(code, "    "))
    proc = run_snippet(code, tmp_path, name=f"example_{index}")
    assert proc.returncode == 0, f"example {index} failed:\n{code}\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
