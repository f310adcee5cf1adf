"""The documents' links lead somewhere: every relative link of the READMEs, RESULTS.md and
docs/*.md names a file that exists, every ``#anchor`` a heading of the file it points into
(GitHub's rule for heading anchors), and every section of README.md is in its table of
contents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from _docs import ROOT

DOCS = [
    ROOT / "README.md",
    ROOT / "bench" / "README.md",
    ROOT / "bench" / "RESULTS.md",
    ROOT / "examples" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _prose(path: Path) -> str:
    """The file without its fenced code blocks (their brackets are code, not links)."""
    return FENCE.sub("", path.read_text("utf-8"))


def _anchor(heading: str) -> str:
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _prose(path).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        base = _anchor(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_anchor_rule() -> None:
    assert _anchor("Advanced configuration (`AdvancedQueueConfig`)") == (
        "advanced-configuration-advancedqueueconfig"
    )
    assert _anchor("Compliance: retention, redaction, erasure") == (
        "compliance-retention-redaction-erasure"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(doc)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, frag = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{doc.name}: {broken}"


def test_every_readme_section_is_in_the_contents() -> None:
    readme = ROOT / "README.md"
    text = _prose(readme)
    contents = text.split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\(#([^)]+)\)", contents))
    sections = [
        _anchor(line[3:]) for line in text.splitlines() if line.startswith("## ")
    ]
    missing = [s for s in sections if s not in linked and s not in {"install", "license"}]
    assert not missing, f"README sections not in its contents at the top: {missing}"
