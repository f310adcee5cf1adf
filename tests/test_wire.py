"""The named layouts of wire.py agree with the Lua scripts' headers and with the code."""

from __future__ import annotations

from importlib import resources

from kitium_queue.wire import CLAIM_HEAD, CLAIM_JOB, ENQUEUE_JOB, FINISH_OUTCOME, OUTCOME_CODES


def _header(name: str) -> str:
    text = resources.files("kitium_queue").joinpath(f"lua/{name}.lua").read_text("utf-8")
    return text.split("]]", 1)[0]


def test_enqueue_layout_matches_the_script() -> None:
    assert f"{len(ENQUEUE_JOB)} fields per job" in _header("enqueue")


def test_finish_layout_and_codes_match_the_script() -> None:
    header = _header("finish")
    assert f"{len(FINISH_OUTCOME)} fields per outcome" in header
    for code in OUTCOME_CODES:
        assert f"'{code}'" in header, code


def test_claim_layout_matches_the_script() -> None:
    header = _header("claim")
    assert "{ status, wake_in, token, {recovered ids}, {dead-lettered ids}, job1" in header
    assert len(CLAIM_HEAD) == 5
    job_line = (
        "{ id, name, data, opts, attempts (incl. this one), created ts, stalls, progress, follows }"
    )
    assert job_line in header
    assert len(CLAIM_JOB) == 9


def test_lua_max_delay_is_the_python_one() -> None:
    from kitium_queue.limits import MAX_DELAY_MS

    text = resources.files("kitium_queue").joinpath("lua/lib_base.lua").read_text("utf-8")
    assert f"local MAX_DELAY_MS = {MAX_DELAY_MS}\n" in text
