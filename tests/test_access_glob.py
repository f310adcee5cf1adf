"""Queue patterns of grants (``features/access/glob.py``): the syntax, fuzzed against
``fnmatch`` as a reference, hostile input refused with a clear error, and the
backtracking bound (a pathological pattern matches in bounded steps)."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kitium_queue.errors import ConfigurationError
from kitium_queue.features.access.glob import MAX_PATTERN_LEN, QueuePattern


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("acme-*", ["acme-", "acme-orders", "acme-orders#3", "acme-a.b:c/d"], ["acme", "xacme-o"]),
        ("acme-orders", ["acme-orders"], ["acme-orders2", "acme-order"]),
        ("*-prod", ["a-prod", "-prod", "x-y-prod"], ["prod", "a-prod2"]),
        ("q?", ["q1", "qé"], ["q", "q12"]),
        ("acme-[a-m]*", ["acme-b", "acme-mail"], ["acme-orders", "acme-"]),
        ("acme-[!t]*", ["acme-orders"], ["acme-test", "acme-"]),
        ("acme-[^t]*", ["acme-orders"], ["acme-test"]),
        ("[ab-]x", ["ax", "bx", "-x"], ["cx"]),
        ("**", ["", "anything"], []),
        ("a*b*c", ["abc", "aXbYc", "abbbc", "acbc"], ["ab", "acb"]),
        ("*a*a*a*a*b", ["aaaab", "xaxaxaxab"], ["a" * 200, "aaab"]),
    ],
)
def test_pattern_semantics(pattern: str, yes: list[str], no: list[str]) -> None:
    p = QueuePattern(pattern)
    for name in yes:
        assert p.matches(name), (pattern, name)
    for name in no:
        assert not p.matches(name), (pattern, name)


def test_literal_and_prefix() -> None:
    assert QueuePattern("acme-orders").is_literal
    assert not QueuePattern("acme-*").is_literal
    assert QueuePattern("acme-*").literal_prefix == "acme-"
    assert QueuePattern("a?c").literal_prefix == "a"
    assert QueuePattern("x") == QueuePattern("x") and hash(QueuePattern("x")) == hash("x")


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("", "empty"),
        ("a b", "' '"),
        ("a{b}", "'{'"),
        ("a\\b", "'\\\\'"),
        ("a[bc", "no closing ]"),
        ("a]", "closing ] without ["),
        ("a[]b", "empty"),
        ("a[!]", "empty"),
        ("[z-a]", "reversed"),
        ("a\x00", "'\\x00'"),
        ("a\ud800", "'\\ud800'"),
        ("a\u202e", "'\\u202e'"),
        ("x" * (MAX_PATTERN_LEN + 1), "more than"),
        ("a[b c]", "cannot be in a class"),
    ],
)
def test_bad_patterns_are_refused_with_the_reason(pattern: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        QueuePattern(pattern)
    assert needle in str(info.value), str(info.value)
    assert len(str(info.value)) < 600


@pytest.mark.parametrize("value", [None, 3, b"acme-*", ["a"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match="must be a str"):
        QueuePattern(value)  # type: ignore[arg-type]


_NAME = st.text(alphabet="ab-.", max_size=8)
_PATTERN = st.lists(
    st.one_of(
        st.sampled_from(["a", "b", "-", ".", "*", "?", "[ab]", "[!a]", "[a-b]", "[-a]"]),
    ),
    max_size=8,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(pattern=_PATTERN, name=_NAME)
def test_matches_like_fnmatch(pattern: str, name: str) -> None:
    if not pattern:
        return
    assert QueuePattern(pattern).matches(name) == fnmatch.fnmatchcase(name, pattern)


_HOSTILE = st.text(
    alphabet=st.sampled_from(list("ab*?[]!^-\\{} \x00\t\u202e\ud800é#:/+.")), max_size=40
)


@settings(max_examples=400, deadline=None)
@given(pattern=_HOSTILE, name=st.text(max_size=40))
def test_any_input_compiles_or_is_refused_clearly(pattern: str, name: str) -> None:
    try:
        p = QueuePattern(pattern)
    except ConfigurationError as exc:
        assert "invalid queue pattern" in str(exc)
        return
    assert isinstance(p.matches(name), bool)


def test_pathological_pattern_matches_in_bounded_steps() -> None:
    # 64 stars against a 256-character name that never matches: the greedy matcher
    # resumes each star at most once per character (no exponential blow-up).
    pattern = QueuePattern("*a" * 64 + "b")
    assert not pattern.matches("a" * 256)
    assert pattern.matches("a" * 64 + "b")
