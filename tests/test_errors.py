"""The Lua error codes and their Python mirror, and the exception tree."""

from __future__ import annotations

import re
from importlib import resources

import pytest

import kitium_queue
from kitium_queue import errors as kq_errors
from kitium_queue.errors import (
    SCRIPT_ERRORS,
    ConfigurationError,
    ConnectionUnavailableError,
    JobActiveError,
    JobNotFoundError,
    JobStateError,
    KitiumQueueError,
    LeaseLostError,
    NonRetryableError,
    PayloadTooLargeError,
    ProcessorSignal,
    QueueActiveError,
    RateLimited,
    RetryLater,
    SerializationError,
    error_from_script,
)
from kitium_queue.scripts import SCRIPT_NAMES

LUA_DIR = resources.files("kitium_queue").joinpath("lua")
_CODE_DEF = re.compile(r"^local\s+(ERR_\w+)\s*=\s*'([A-Z_]+)'", re.MULTILINE)


def _lua(name: str) -> str:
    return LUA_DIR.joinpath(f"{name}.lua").read_text("utf-8")


def _lua_codes() -> dict[str, str]:
    return dict(_CODE_DEF.findall(_lua("errors")))


def test_lua_error_codes_match_python_mirror() -> None:
    codes = _lua_codes()
    assert codes, "no error codes found in lua/errors.lua"
    assert set(codes.values()) == set(SCRIPT_ERRORS)


def test_lua_error_constant_names_follow_their_codes() -> None:
    for const, code in _lua_codes().items():
        assert code == "KQ_" + const.removeprefix("ERR_"), (const, code)


def test_every_error_constant_used_by_a_script_is_defined() -> None:
    defined = set(_lua_codes())
    lua_files = [p for p in LUA_DIR.iterdir() if p.name.endswith(".lua")]
    for path in lua_files:
        if path.name == "errors.lua":
            continue
        text = path.read_text("utf-8")
        used = set(re.findall(r"\bERR_[A-Z_]+\b", text))
        assert used <= defined, f"{path.name} uses undefined codes {used - defined}"
        if used or "fail(" in text:
            assert "--@include errors" in text, f"{path.name} raises errors without the fragment"


def test_every_script_name_has_a_lua_file_with_a_header() -> None:
    for name in SCRIPT_NAMES:
        text = _lua(name)
        assert text.lstrip().startswith("--[["), f"{name}.lua lacks its header comment"
        header = text.split("]]", 1)[0]
        assert "KEYS" in header and "ARGV" in header, f"{name}.lua header names no KEYS/ARGV"
        assert "Returns" in header or "returns" in header, f"{name}.lua header lacks Returns"


@pytest.mark.parametrize("code", sorted(SCRIPT_ERRORS))
def test_error_from_script_maps_each_code(code: str) -> None:
    exc = error_from_script(f"{code} job 7 is waiting")
    assert isinstance(exc, SCRIPT_ERRORS[code])
    assert str(exc) == "job 7 is waiting"


def test_error_from_script_ignores_foreign_errors() -> None:
    assert error_from_script("ERR something else") is None
    assert error_from_script("") is None


def test_exception_tree() -> None:
    for exc_type in (
        ConfigurationError,
        SerializationError,
        PayloadTooLargeError,
        ConnectionUnavailableError,
        JobNotFoundError,
        JobStateError,
        QueueActiveError,
        LeaseLostError,
    ):
        assert issubclass(exc_type, KitiumQueueError), exc_type
    assert issubclass(JobActiveError, JobStateError)
    assert issubclass(RateLimited, RetryLater)
    assert issubclass(RetryLater, ProcessorSignal)
    assert issubclass(NonRetryableError, ProcessorSignal)
    # Familiar builtin bases, so generic handlers still catch them.
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(SerializationError, TypeError)
    assert issubclass(ConnectionUnavailableError, ConnectionError)
    assert issubclass(JobNotFoundError, KeyError)


def test_job_not_found_message_is_not_quoted() -> None:
    assert str(JobNotFoundError("job 9 does not exist")) == "job 9 does not exist"


def test_retry_later_carries_delay_and_reason() -> None:
    exc = RetryLater(250, "upstream busy")
    assert (exc.delay_ms, exc.reason, str(exc)) == (250, "upstream busy", "upstream busy")
    assert RetryLater(-5).delay_ms == 0
    limited = RateLimited(100)
    assert limited.delay_ms == 100 and limited.reason == "rate limited"


def test_error_names_exported_from_package() -> None:
    for name in kq_errors.__all__:
        if name in ("SCRIPT_ERRORS", "error_from_script", "REFUSAL_ERRORS", "refusal_error",
                    "ProcessorSignal"):
            continue
        assert getattr(kitium_queue, name) is getattr(kq_errors, name), name
