"""Messages a new user met (stop 62), each checked against a real Redis where a queue
is involved:

1. ``JobQueue(name, lock_duration=5)`` (a section's option given as a keyword of the
   queue) raised Python's bare ``TypeError`` (unexpected keyword argument). Now an
   unknown keyword of ``JobQueue`` (and ``SyncJobQueue``) is a ``ConfigurationError``
   naming the closest keyword, every valid one, and the section an option belongs to,
   also when it is misspelt there (``concurency``: ``worker={'concurrency': ...}``).
"""

from __future__ import annotations

import inspect

import pytest

from kitium_queue import ConfigurationError, JobQueue, QueueConfig, SyncJobQueue


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"lock_duration": 5}, "JobQueue(name, ..., settings={'lock_duration': ...})"),
        ({"max_attempts": 3}, "JobQueue(name, ..., retry={'max_attempts': ...})"),
        ({"concurency": 3}, "'concurency' looks like worker's 'concurrency'"),
        ({"lockDuration": 3}, "looks like settings's 'lock_duration'"),
        ({"retyr": {}}, "'retyr' (did you mean 'retry'?)"),
    ],
)
def test_an_unknown_keyword_of_the_queue_says_where_it_belongs(
    redis_url: str, given: dict[str, object], said: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("kw", redis=redis_url, **given)  # type: ignore[arg-type]
    text = str(err.value)
    assert text.startswith("unknown JobQueue keyword"), text
    assert said in text, text
    assert "valid keywords are: advanced, codecs" in text, text


def test_a_keyword_that_belongs_nowhere_gets_no_guess(redis_url: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        JobQueue("kw", redis=redis_url, zzz=1)  # type: ignore[call-arg]
    assert "looks like" not in str(err.value) and "did you mean" not in str(err.value)


def test_the_sync_client_and_queue_config_say_the_same(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"settings=\{'lock_duration'"):
        SyncJobQueue("kw", redis=redis_url, lock_duration=5)
    with pytest.raises(ConfigurationError, match=r"QueueConfig\(name, \.\.\., worker="):
        QueueConfig("kw", concurency=3)  # type: ignore[call-arg]


async def test_valid_keywords_and_the_signature_are_unchanged(redis_url: str) -> None:
    q = JobQueue(name="kw", redis=redis_url, worker={"concurrency": 2})
    try:
        assert q.name == "kw"
        params = inspect.signature(JobQueue).parameters
        assert "redis" in params and "advanced" in params and "kwargs" not in params
    finally:
        await q.close()
