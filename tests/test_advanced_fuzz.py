"""Fuzzing the public inputs of issue 22: ``AdvancedQueueConfig.parse`` with hostile
dicts, ``PathRedactor`` with hostile paths and payloads, the compression codec with
arbitrary bytes. Each either works or raises the library's error with a bounded,
escaped message; nothing else escapes, nothing hangs."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fuzz_strategies import json_values, nasty_numbers, nasty_text, unwrap, wrong_types
from kitium_queue import AdvancedQueueConfig, ConfigurationError, SerializationError
from kitium_queue.features.advanced import SECTIONS
from kitium_queue.features.compliance import PathRedactor
from kitium_queue.features.compression import CompressionCodec

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
anything = st.one_of(nasty_text(), nasty_numbers(), wrong_types(), st.booleans(), st.none())


def _field_names(section: str) -> list[str]:
    return list(SECTIONS[section].__dataclass_fields__)  # type: ignore[attr-defined]


@FAST
@given(
    section=st.sampled_from(sorted(SECTIONS)),
    data=st.data(),
)
def test_config_parse_only_raises_configuration_errors(section: str, data: Any) -> None:
    names = _field_names(section)
    keys = st.one_of(st.sampled_from(names), nasty_text())
    raw = data.draw(st.dictionaries(keys, anything, max_size=4))
    value = {k: unwrap(v) for k, v in raw.items()}
    try:
        cfg = AdvancedQueueConfig.parse({section: value})
    except ConfigurationError as exc:
        text = str(exc)
        assert len(text) < 5000
        assert "\x00" not in text and "\ud800" not in text
    else:
        assert cfg.section(section).to_dict() is not None


@FAST
@given(paths=st.lists(nasty_text(), max_size=5), value=json_values())
def test_redactor_never_raises_and_keeps_unmatched(paths: list[Any], value: Any) -> None:
    try:
        r = PathRedactor([unwrap(p) for p in paths])
    except ConfigurationError:
        return
    v = unwrap(value)
    out = r(v)
    if not r.paths:
        assert out is v


@FAST
@given(value=json_values())
def test_redactor_with_nothing_matching_returns_an_equal_copy(value: Any) -> None:
    v = unwrap(value)
    # repr, not ==: the values may hold NaN, which equals nothing, itself included.
    assert repr(PathRedactor(["no-such-key.deeper"])(v)) == repr(v)


@FAST
@given(blob=st.binary(max_size=4096), threshold=st.integers(1, 64))
def test_codec_round_trips_and_rejects_garbage(blob: bytes, threshold: int) -> None:
    for algorithm in ("zstd", "zlib"):
        codec = CompressionCodec(algorithm=algorithm, threshold=threshold)
        assert codec.decode(codec.encode(blob)) == blob
        garbage = b"\x00kqz" + (b"s" if algorithm == "zstd" else b"z") + blob
        with contextlib.suppress(SerializationError):
            codec.decode(garbage)  # garbage either decodes or says it is damaged
