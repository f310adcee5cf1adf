"""The brief's typing names: ``JobProcessor[T]`` and ``QueueConfig``.

mypy (strict) accepts the typed example and rejects the same code with a wrong data
key or a processor of another data type, so the types do check something.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api as mypy_api

from kitium_queue import ConfigurationError, Job, JobQueue, QueueConfig, RetryConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "typed_processor.py"


def _mypy(path: Path, cache: Path | None = None) -> tuple[int, str]:
    """mypy --strict on ``path``: with ``cache``, incremental in that directory; without,
    from scratch and nothing kept."""
    kept = [f"--cache-dir={cache}"] if cache else ["--no-incremental", "--cache-dir=/dev/null"]
    out, err, code = mypy_api.run(["--strict", *kept, "--no-error-summary", str(path)])
    return code, out + err


def test_the_typed_example_passes_mypy_strict(mypy_cache: Path) -> None:
    code, out = _mypy(EXAMPLE, mypy_cache)
    assert code == 0, out


def test_mypy_catches_a_wrong_data_key_and_a_mismatched_processor(
    tmp_path: Path, mypy_cache: Path
) -> None:
    bad = tmp_path / "bad_typed.py"
    bad.write_text(
        EXAMPLE.read_text().replace('job.data["to"].lower()', 'job.data["too"].lower()')
        + "\n\nasync def other(job: Job[int]) -> None:\n    return None\n\n\n"
        "wrong: JobProcessor[EmailData] = other\n"
    )
    code, out = _mypy(bad, mypy_cache)
    assert code == 1, out
    assert 'TypedDict "EmailData" has no key "too"' in out
    assert "Incompatible types in assignment" in out


def test_queue_config_is_accepted_by_job_queue() -> None:
    cfg = QueueConfig(
        "cfg",
        prefix="kqcfg",
        retry=RetryConfig(max_attempts=7),
        worker={"concurrency": 3},
        max_log_lines=50,
    )
    q = JobQueue(cfg)
    assert (q.name, q.keys.base.startswith("kqcfg"), q.retry.max_attempts) == ("cfg", True, 7)
    assert q.worker_config.concurrency == 3 and q.max_log_lines == 50
    with pytest.raises(ConfigurationError, match="also prefix"):
        JobQueue(cfg, prefix="other")
    with pytest.raises(ConfigurationError):
        JobQueue(QueueConfig("cfg2", worker={"concurrency": 0}))


def test_job_is_generic_and_plain_job_still_works() -> None:
    job: Job[dict[str, int]] = Job(
        id="1",
        name="n",
        data={"a": 1},
        attempts=1,
        max_attempts=1,
        created_at=0,
        options={},
        queue_name="q",
    )
    assert job.data["a"] == 1
    assert Job[int] is not Job  # subscriptable at run time, like any generic
