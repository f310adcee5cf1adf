"""Run the Python examples of the documentation.

* ``run_doc_example(tag, tmp)``: a block of ``docs/scale-out.md`` tagged
  ``# example: <tag>``, as a script.
* ``python_blocks(path)``: every ```` ```python ```` block of a Markdown file.
* ``run_snippet(code, tmp, prelude=...)``: one block in a fresh interpreter, as a reader
  would run it: a block with ``asyncio.run(...)`` is a whole script; any other block runs
  as in ``python -m asyncio`` (top-level ``await`` allowed) after ``prelude``, and the
  prelude's ``queue`` is closed afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["python_blocks", "run_doc_example", "run_snippet"]

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scale-out.md"

# Runs a snippet like the asyncio REPL does: compiled with top-level await allowed, in a
# namespace where the prelude ran first.
_SESSION = """\
import ast, asyncio, inspect, sys
ns = {"__name__": "__main__"}
exec(compile(open(sys.argv[1]).read(), "prelude", "exec"), ns)
code = compile(open(sys.argv[2]).read(), "snippet", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

async def main():
    result = eval(code, ns)
    if inspect.iscoroutine(result):
        await result
    close = getattr(ns.get("queue"), "close", None)
    if close is not None:
        done = close()
        if inspect.isawaitable(done):
            await done

if code.co_flags & inspect.CO_COROUTINE:
    asyncio.run(main())
else:  # no await: plain code, as a reader would paste it into python
    exec(code, ns)
    close = getattr(ns.get("queue"), "close", None)
    done = close() if close is not None else None
    if inspect.isawaitable(done):
        asyncio.run(done)
"""


def doc_example(tag: str) -> str:
    blocks = python_blocks(DOC)
    (code,) = [b for b in blocks if b.startswith(f"# example: {tag}\n")]
    return code


def python_blocks(path: Path) -> list[str]:
    """The ```` ```python ```` blocks of Markdown file ``path``, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _env(tmp: Path, env: dict[str, str]) -> dict[str, str]:
    paths = [str(ROOT / "src"), str(tmp), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **env}


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


def run_snippet(
    code: str,
    tmp: Path,
    *,
    prelude: str = "",
    name: str = "snippet",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (see the module docstring) and return the finished process."""
    snippet = tmp / f"{name}.py"
    snippet.write_text(code)
    if "asyncio.run(" in code:
        argv = [sys.executable, str(snippet)]
    else:
        (tmp / f"{name}_prelude.py").write_text(prelude)
        (tmp / f"{name}_session.py").write_text(_SESSION)
        argv = [
            sys.executable,
            str(tmp / f"{name}_session.py"),
            str(tmp / f"{name}_prelude.py"),
            str(snippet),
        ]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=90, cwd=tmp, env=_env(tmp, env or {})
    )
