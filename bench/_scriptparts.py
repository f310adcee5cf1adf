"""Pieces of the engine's scripts the script-level benchmarks call directly
(``bench_single.py``, ``bench_functions.py``, ``bench_script_cost.py``)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from kitium_queue import JobQueue


def one_job_call(queue: JobQueue, name: str = "n") -> tuple[list[Any], list[Any]]:
    """The key vector and the arguments of the enqueue script adding one small job
    (``{"i": 0}`` named ``name``) to ``queue``, built as ``add_job`` builds them."""
    producer = queue.producer
    keys = list(producer.ctx.keys.all)
    return keys, producer.script_args([producer.prepare(name, {"i": 0}, {})])


def own_start(name: str, source: str) -> int:
    """Offset in ``source`` (script ``name`` as composed) of the first statement of the
    script's own file: what comes before is its fragments' definitions and setup."""
    raw = resources.files("kitium_queue").joinpath(f"lua/{name}.lua").read_text("utf-8")
    body = raw[raw.index("]]") + 2 :] if raw.startswith("--[[") else raw
    for line in body.splitlines():
        s = line.strip()
        if s and not s.startswith("--"):
            return source.index(line)
    raise SystemExit(f"no statement in {name}.lua")


def fixed_part(name: str, source: str) -> str:
    """Script ``name`` (composed ``source``) cut before its own first statement, then
    ``return 1``: the per-call cost of its definitions and setup alone."""
    return source[: own_start(name, source)] + "\nreturn 1\n"
