"""The CLI's job filters and arguments under hostile input (issue 16, item 4): whatever
text a user types (surrogates, control and glob characters, huge numbers) is refused as
a usage error or used as given, and whatever a job holds (deep, wide, odd data) is
matched or not, never an exception; every output form stays one line per record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from _fuzz_strategies import BIG_VALUES, data_values, nasty_text, unwrap
from helpers import app_module
from kitium_queue import JobStatus
from kitium_queue.cli import EXIT_ERROR, EXIT_USAGE, main
from kitium_queue.cli.select import JobFilter, make_filter, parse_duration
from kitium_queue.job import JobInfo

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0", 0),
        ("250", 250),
        ("500ms", 500),
        ("1.5s", 1500),
        ("2m", 120_000),
        ("3H", 10_800_000),
        ("7d", 604_800_000),
        ("1w", 604_800_000),
        (" 30s ", 30_000),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@given(nasty_text())
@FUZZ
def test_any_text_is_a_duration_or_a_usage_error(text: Any) -> None:
    text = unwrap(text)
    try:
        ms = parse_duration(text)
    except click.BadParameter as exc:
        assert "duration" in str(exc) or "10 years" in str(exc)
    else:
        assert isinstance(ms, int) and 0 <= ms <= 10 * 365 * 86_400_000


@given(nasty_text(long=False), nasty_text(long=False), nasty_text(long=False), data_values())
@FUZZ
def test_any_filter_matches_any_job_without_raising(
    name: Any, field: Any, error: Any, data: Any
) -> None:
    try:
        flt = make_filter(
            name_glob=name, data=[f"{field}={field}", "a.0.b=1"], error_text=error, newer_than="1d"
        )
    except click.BadParameter:
        return  # a --data without '=' or a bad duration: a usage error
    info = JobInfo(
        id="1",
        name=str(name),
        status=JobStatus.DLQ,
        data=unwrap(data),
        failed_reason=str(error),
        finished_at=flt.now_ms - 1,
    )
    assert flt.matches(info) in (True, False)
    assert isinstance(flt.describe(), str)


def test_data_conditions() -> None:
    info = JobInfo(
        id="1",
        name="send-mail",
        status=JobStatus.WAITING,
        created_at=0,
        data={"n": 7, "s": "7", "b": True, "user": {"tags": ["x", "y"]}, "none": None},
    )
    yes = ["n=7", "s=7", 's="7"', "b=true", "user.tags.1=y", "none=null", "n=7.0"]
    no = [
        "n=8",
        "b=1",
        "n=true",
        "user.tags.2=y",
        "user.tags=x",
        "missing=1",
        'n="7"',
        "none=",
        "user.tags.x=y",
    ]
    for cond in yes:
        assert make_filter(data=[cond]).matches(info), cond
    for cond in no:
        assert not make_filter(data=[cond]).matches(info), cond
    assert make_filter(name_glob="send-*").matches(info)
    assert not make_filter(name_glob="send-[!m]*").matches(info)
    assert make_filter(older_than="1d").matches(info)  # created at 0: old
    assert not make_filter(newer_than="1d").matches(info)
    assert JobFilter().empty and not make_filter(error_text="").empty


@pytest.fixture
def app(tmp_path: Path) -> Iterator[str]:
    source = "from kitium_queue import JobQueue\nqueue = JobQueue('fz')\n"
    with app_module(tmp_path, source, "kq_cli_fuzz") as module:
        yield f"{module}:queue"


@given(nasty_text(long=False))
@FUZZ
def test_hostile_arguments_are_one_line_errors(app: str, text: Any) -> None:
    """Ids, globs, cursors and durations from a hostile shell: a result or a one-line
    error with its exit code, never a traceback."""
    text = unwrap(text)
    runner = CliRunner()
    for args in (
        ["jobs", "show", app, text],
        ["jobs", "list", app, "--name", text],
        ["jobs", "list", app, "--cursor", text],
        ["dlq", "list", app, "--older-than", text],
        ["jobs", "retry", app, text],
        ["jobs", "list", app, "--data", text],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code in (0, EXIT_ERROR, EXIT_USAGE), (args, result.output)
        assert "Traceback" not in result.output + result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_big_values_in_a_filter_are_fine() -> None:
    flt = make_filter(data=["a.b=1"])
    for big in BIG_VALUES:
        value = unwrap(big)
        info = JobInfo(id="1", name="n", status=JobStatus.WAITING, data=value)
        assert flt.matches(info) in (True, False)
