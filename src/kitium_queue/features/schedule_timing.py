"""Tick times of a schedule (``schedules.py``): cron patterns through croniter, intervals
by arithmetic. Times are epoch milliseconds.

A cron schedule ticks on whole seconds in its time zone. When the clocks go back
(daylight saving time ends) a wall-clock time happens twice. The hour field decides,
by the hours it matches, not by how it is written: one that matches every hour (``*``,
``*/1``, ``0-23``, a list of all 24, ``@hourly``) ticks on both passes, by elapsed time
(``"*/15 * * * *"``: every real quarter of an hour); any other (``2``, ``1-3``, ``*/2``)
ticks once, at the first pass, as cron does. When the clocks go forward, a tick inside
the skipped hour runs at the first time after it (croniter's rule).

An interval schedule ticks at ``anchor + k * interval`` where ``anchor`` is its start
date (or the Unix epoch), so every process computes the same ticks.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from croniter import croniter

__all__ = ["CronTiming", "IntervalTiming", "Timing"]


class Timing:
    """Tick times of a schedule, bounded by its start and end dates (ms, inclusive)."""

    def __init__(self, start: int | None, end: int | None) -> None:
        self.start = start
        self.end = end

    def _next(self, t: int) -> int | None:  # first raw tick strictly after t
        raise NotImplementedError

    def _prev(self, t: int) -> int | None:  # last raw tick at or before t
        raise NotImplementedError

    def next_after(self, t: int) -> int | None:
        """The first tick strictly after ``t``, or None if the schedule has ended."""
        if self.start is not None and t < self.start:
            t = self.start - 1
        n = self._next(t)
        if n is None or (self.end is not None and n > self.end):
            return None
        return n

    def prev_at_or_before(self, t: int) -> int | None:
        """The last tick at or before ``t``, or None if there is none since the start."""
        if self.end is not None and t > self.end:
            t = self.end
        p = self._prev(t)
        if p is None or (self.start is not None and p < self.start):
            return None
        return p


class CronTiming(Timing):
    """Ticks of a 5-field (minute resolution) or 6-field (seconds first) cron pattern;
    see the module docstring for daylight saving time."""

    def __init__(self, pattern: str, tz: tzinfo, start: int | None, end: int | None) -> None:
        super().__init__(start, end)
        self.pattern = pattern
        self.tz = tz
        self.seconds = len(pattern.split()) == 6
        self._fixed_hour: bool | None = None

    @property
    def fixed_hour(self) -> bool:
        """Whether the pattern matches some hours only (it ticks once when a wall-clock
        time happens twice); read from the expanded hour field, so that equivalent
        patterns (``*``, ``0-23``, ``*/1``) behave the same."""
        if self._fixed_hour is None:
            from croniter import croniter

            # expanded: minute, hour, ... whatever the layout (seconds go last).
            hours = croniter(self.pattern, 0, second_at_beginning=self.seconds).expanded[1]
            self._fixed_hour = "*" not in hours and not set(range(24)) <= set(hours)
        return self._fixed_hour

    def _iter(self, t_ms: int) -> croniter:
        from croniter import croniter  # on first use: a cron schedule's ticks

        start = datetime.fromtimestamp(t_ms / 1000, self.tz)
        return croniter(self.pattern, start, second_at_beginning=self.seconds)

    def _shift_ms(self, ms: int) -> int:
        """How far the clocks went back if ``ms`` is on the second pass of a repeated
        wall-clock time (a fixed-hour pattern does not tick there), else 0."""
        local = datetime.fromtimestamp(ms / 1000, self.tz)
        if local.fold != 1 or not self.fixed_hour:
            return 0
        first, second = local.replace(fold=0).utcoffset(), local.utcoffset()
        if first is None or second is None or first <= second:
            return 0
        return int((first - second).total_seconds() * 1000)

    def _edge(self, inside: int, outside: int) -> int:
        """The instant of the second pass nearest ``outside`` (binary search between an
        instant on it and one off it)."""
        while abs(outside - inside) > 1:
            mid = (inside + outside) // 2
            if self._shift_ms(mid):
                inside = mid
            else:
                outside = mid
        return inside

    def _next(self, t: int) -> int | None:
        from croniter.croniter import CroniterBadDateError

        try:
            n = round(self._iter(t).get_next(float) * 1000)
            shift = self._shift_ms(n)
            if shift:  # on the second pass: the next tick after it
                n = round(self._iter(self._edge(n, n + shift)).get_next(float) * 1000)
            return n
        except (CroniterBadDateError, ValueError, OverflowError):  # past year 9999
            return None

    def _prev(self, t: int) -> int | None:
        from croniter.croniter import CroniterBadDateError

        try:
            # croniter's get_prev is strictly before its start; +1 ms makes it inclusive.
            p = round(self._iter(t + 1).get_prev(float) * 1000)
            shift = self._shift_ms(p)
            if shift:  # on the second pass: the last tick before it
                p = round(self._iter(self._edge(p, p - shift)).get_prev(float) * 1000)
            return p
        except (CroniterBadDateError, ValueError, OverflowError):  # before year 1
            return None


class IntervalTiming(Timing):
    """Ticks every ``interval`` ms, aligned on ``start`` (or the Unix epoch)."""

    def __init__(self, interval: int, start: int | None, end: int | None) -> None:
        super().__init__(start, end)
        self.interval = interval
        self.anchor = start or 0

    def _next(self, t: int) -> int | None:
        if t < self.anchor:
            return self.anchor
        return self.anchor + ((t - self.anchor) // self.interval + 1) * self.interval

    def _prev(self, t: int) -> int | None:
        if t < self.anchor:
            return None
        return self.anchor + ((t - self.anchor) // self.interval) * self.interval
