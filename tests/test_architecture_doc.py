"""docs/ARCHITECTURE.md stays true: its job-record table is records.JOB_FIELDS, and
every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from kitium_queue.records import JOB_FIELDS

DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
PKG = Path(__file__).resolve().parents[1] / "src" / "kitium_queue"


def test_job_record_table_matches_the_fields() -> None:
    text = DOC.read_text("utf-8")
    section = text.split("## The job record", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z]+)` \|", section, re.MULTILINE)
    assert listed == list(JOB_FIELDS), "regenerate the table from records.JOB_FIELDS"


def test_every_module_and_script_named_exists() -> None:
    text = DOC.read_text("utf-8")
    root = PKG.parents[1]
    for path in set(re.findall(r"tests/[a-z_]+\.py", text)):
        assert (root / path).exists(), f"{path} is named in ARCHITECTURE.md"
    for path in set(re.findall(r"features/[a-z_]+\.py", text)):
        assert (PKG / path).exists(), f"{path} is named in ARCHITECTURE.md"
    for name in set(re.findall(r"(?<![/\w])([a-z_]+)\.py\b", text)):
        assert (PKG / f"{name}.py").exists(), f"{name}.py is named in ARCHITECTURE.md"
    for name in set(re.findall(r"\b([a-z_]+)\.lua\b", text)):
        if "*" in name:
            continue
        found = (PKG / "lua" / f"{name}.lua").exists() or any(PKG.rglob(f"{name}.lua"))
        assert found, f"{name}.lua is named in ARCHITECTURE.md"
