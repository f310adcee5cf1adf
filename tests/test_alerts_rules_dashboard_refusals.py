"""Alert rules that could never clear or fire at once are refused, and a reading that
is no finite number keeps a rule's state; the dashboard's refusals by role are written
within the bound on ``access.denied`` entries (features/audit/refusals.py)."""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

import pytest

from helpers import QueueFactory
from kitium_queue import AlertManager, AlertRule, ConfigurationError, JobQueue
from kitium_queue.dashboard import create_dashboard
from kitium_queue.features.access import AccessControlManager
from kitium_queue.features.audit import AuditEntry, AuditLog
from test_dashboard_asgi import TOKENS, VIEWER, client_for, csrf_of

KEY = secrets.token_hex(32)


def _monitoring(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"monitoring": {"enabled": True, "alerts": list(rules)}}


# ---------------------------------------------------------------------- rules
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"threshold": 0}, "alert rule 'r': threshold must be above 0, got 0"),
        ({"threshold": -5}, "alert rule 'r': threshold must be above 0, got -5"),
        ({"threshold": -0.0}, "alert rule 'r': threshold must be above 0"),
        ({"threshold": 3, "clear_below": 0}, "alert rule 'r': clear_below must be above 0"),
        ({"threshold": 3, "clear_below": -1.5}, "alert rule 'r': clear_below must be above 0"),
        ({"threshold": 3, "clear_below": 4}, "alert rule 'r': clear_below .* above the thr"),
        ({"threshold": math.nan}, "alert rule 'r': threshold must be a finite number"),
        ({"threshold": math.inf}, "alert rule 'r': threshold must be a finite number"),
        ({"threshold": True}, "alert rule 'r': threshold must be a finite number"),
        ({"threshold": 3, "clear_below": math.nan}, "alert rule 'r': clear_below must be a fin"),
        ({"threshold": 3, "clear_below": -math.inf}, "alert rule 'r': clear_below must be a fin"),
        ({"threshold": 3, "clear_below": False}, "alert rule 'r': clear_below must be a finite"),
    ],
)
def test_rules_that_could_never_clear_or_would_fire_at_once_are_refused(
    fields: dict[str, Any], needle: str
) -> None:
    """Every metric is 0 or more: a threshold at or below 0 fires at the first
    evaluation, a clear_below at or below 0 never clears. Refused from the Python API
    and from a dict of the advanced config, naming the rule and the field."""
    with pytest.raises(ConfigurationError, match=needle):
        AlertRule("r", "queue_depth", **fields)
    with pytest.raises(ConfigurationError, match=needle):
        JobQueue("rules", advanced=_monitoring({"name": "r", "metric": "queue_depth", **fields}))
    with pytest.raises(ConfigurationError, match=needle):
        AlertManager(JobQueue("rules2"), [{"name": "r", "metric": "dlq_growth", **fields}])


def test_rules_above_zero_are_accepted() -> None:
    """A breaker rule fires at 1 open breaker and clears below 0.5 (none open)."""
    r = AlertRule("open", "breaker_open", 1, clear_below=0.5)
    assert r.clears_below == 0.5
    assert AlertRule("tiny", "failure_rate", 0.01).clears_below == 0.01
    assert AlertRule("same", "queue_depth", 2, clear_below=2).clears_below == 2


async def test_a_reading_that_is_no_finite_number_keeps_the_state(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A NaN or infinite reading (a gauge provider dividing by zero) is no reading:
    the rule keeps its state, ``values()`` leaves it out, and the first such reading in
    a row is logged once per rule, without the value."""
    q = make_queue(
        "gauge-q",
        advanced=_monitoring(
            {"name": "deep", "metric": "queue_depth", "threshold": 1},
            {"name": "quiet", "metric": "queue_depth", "threshold": 5},
        ),
    )
    m: AlertManager = q.advanced.alerts
    await q.add_job("n", {})
    (fired,) = await m.evaluate(1)
    assert (fired.rule, fired.state) == ("deep", "firing")

    real = m._readings
    bad: dict[str, float] = {}

    async def readings() -> dict[str, float]:
        return {**(await real()), **bad}

    monkeypatch.setattr(m, "_readings", readings)
    bad.update(deep=math.nan, quiet=math.inf)
    await q.drain()  # were it read, "deep" would clear
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    for _ in range(3):
        assert await m.evaluate(1) == []  # inf does not fire "quiet", NaN keeps "deep"
    assert {s.rule: s.state for s in await m.states()} == {"deep": "firing", "quiet": "ok"}
    assert await m.values() == {}
    warned = [r for r in caplog.records if "no finite number" in r.getMessage()]
    assert sorted(r.getMessage().split("alert rule ")[1].split()[0] for r in warned) == [
        "deep",
        "quiet",
    ]
    assert all("nan" not in r.getMessage() and "inf" not in r.getMessage() for r in warned)

    bad.clear()  # read again: "deep" clears, and a later miss is logged again
    (cleared,) = await m.evaluate(1)
    assert (cleared.rule, cleared.state) == ("deep", "ok")
    bad["deep"] = -math.inf
    assert await m.evaluate(1) == []
    assert len([r for r in caplog.records if "no finite number" in r.getMessage()]) == 3


# ---------------------------------------------------------------------- dashboard
def _split(entries: list[AuditEntry]) -> tuple[list[AuditEntry], list[AuditEntry]]:
    single = [e for e in entries if "suppressed" not in e.metadata]
    return single, [e for e in entries if "suppressed" in e.metadata]


async def _flood(app: Any, times: int) -> None:
    """``times`` refused POSTs (a viewer pausing the queue) from one session."""
    c = client_for(app)
    assert (await c.post("/login", data={"token": VIEWER, "next": "/"})).status_code == 303
    csrf = csrf_of((await c.get("/q/shop")).text)
    for _ in range(times):
        r = await c.post("/q/shop/action/pause", data={"csrf": csrf})
        assert r.status_code == 403 and "needs the manager role" in r.text


def _check_dashboard_entry(e: AuditEntry) -> None:
    assert (e.principal, e.action, e.resource, e.outcome) == (
        "vera@example.com",
        "access.denied",
        "shop",
        "denied",
    )
    assert e.metadata["via"] == "dashboard" and e.metadata["action"] == "pause"
    assert e.metadata["role"] == "viewer" and e.metadata["needs_role"] == "manager"


async def test_dashboard_refusals_in_a_loop_are_bounded_and_counted_exactly(
    make_queue: QueueFactory, backend_url: str, prefix: str
) -> None:
    """200 refused POSTs of one viewer session in one window: 10 entries written
    before their 403s, then one summary (``via: dashboard`` kept) counting the 190
    others; the log never holds more than 11 for the window."""
    shop = make_queue("shop")
    acm = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY, refusal_window=600_000)
    try:
        app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=acm)
        await _flood(app, 200)
        await acm.audit.flush()
        during = await acm.query_audit_log(action="access.denied", limit=10_000)
        single, summaries = _split(during)
        assert (len(single), summaries) == (10, [])  # the rest counted, not written
    finally:
        await acm.close()  # sums up the window this process counted in
    reader = AccessControlManager(backend_url, prefix=prefix, audit_key=KEY)
    try:
        assert (await reader.verify_audit_log()).ok
        got = await reader.query_audit_log(action="access.denied", newest_first=False)
    finally:
        await reader.close()
    assert len(got) <= 11
    single, [summary] = _split(got)
    for e in got:
        _check_dashboard_entry(e)
    assert len(single) + summary.metadata["suppressed"] == 200
    assert summary.metadata["suppressed"] == 190 and "permission" not in summary.metadata
    start, end = summary.metadata["window_start"], summary.metadata["window_end"]
    assert end - start == 600_000
    assert all(start - 1000 <= int(e.id.split("-")[0]) < end for e in single)
    # The grants' refusals of the same triple count apart from the dashboard's.
    member = acm.refusals.member
    assert member("p", "pause", "shop") != member("p", "pause", "shop", "dashboard")


async def test_dashboard_on_a_plain_audit_log_bounds_its_refusals_too(
    make_queue: QueueFactory, backend_url: str, prefix: str
) -> None:
    shop = make_queue("shop")
    log = AuditLog(backend_url, prefix=prefix, key=KEY)
    try:
        app = create_dashboard(queues=[shop], tokens=TOKENS, refresh_ms=0, access=log)
        await _flood(app, 30)
        assert len(await log.query(action="access.denied")) == 10
        await app.state.dashboard.refusals.close()  # its windows summed up early
        got = await log.query(action="access.denied", newest_first=False)
        single, [summary] = _split(got)
        assert (len(single), summary.metadata["suppressed"]) == (10, 20)
        for e in got:
            _check_dashboard_entry(e)
        assert (await log.verify()).ok
    finally:
        await log.close()
