"""The shared behaviour suites re-run on a Redis Cluster (3 masters + 3 replicas).

Every test of ``test_queue_api`` and ``test_worker_behaviour`` that needs nothing but a
backend (the ``make_queue`` / ``backend_url`` / ``prefix`` fixtures, plus its own
parameters) is collected here a second time, with ``backend_url`` pointing at the
cluster. Tests that talk to the standalone server directly (``redis_url``,
``redis_client``, private servers) are left to their modules. After each test no node
may have answered a CROSSSLOT error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import test_queue_api
import test_worker_behaviour
from _cluster import LocalCluster

_BACKEND_FIXTURES = {"make_queue", "backend_url", "prefix", "caplog", "monkeypatch"}


def _params(fn: Callable[..., Any]) -> set[str]:
    names: set[str] = set()
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize":
            argnames = mark.args[0]
            if isinstance(argnames, str):
                argnames = [a.strip() for a in argnames.split(",")]
            names.update(argnames)
    return names


def _suite(module: Any, tag: str) -> dict[str, Callable[..., Any]]:
    out = {}
    for name, fn in vars(module).items():
        if not name.startswith("test_") or not inspect.isfunction(fn):
            continue
        needs = set(inspect.signature(fn).parameters)
        if needs <= _BACKEND_FIXTURES | _params(fn):
            out[f"test_{tag}__{name[5:]}"] = fn
    return out


globals().update(_suite(test_queue_api, "api"))
globals().update(_suite(test_worker_behaviour, "worker"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as c:
        yield c


@pytest.fixture
def backend_url(cluster: LocalCluster) -> str:
    return cluster.url


@pytest.fixture(autouse=True)
def no_crossslot(cluster: LocalCluster) -> Iterator[None]:
    yield
    assert cluster.crossslot_errors() == {}
