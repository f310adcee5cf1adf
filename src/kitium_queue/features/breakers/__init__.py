"""Circuit breakers that hold jobs (``CircuitBreakerManager``).

A breaker counts the outcomes of the runs and calls bound to it in a rolling window.
When failures reach its threshold it *opens*: bound jobs are held (parked, status
``pending``, no attempt spent) instead of failing, and inline calls
(``breaker.execute``) raise ``CircuitOpenError``. After its timeout it lets a few
probes through (*half-open*); when they succeed it *closes* and the held jobs run.

* ``manager.py``: ``CircuitBreakerManager`` (definitions, state, operators' commands)
  and ``CircuitBreaker`` (``execute``);
* ``lua.py``: the Lua shared by the admission and release slot fragments and the
  breaker script (every state change is atomic, in Redis);
* ``script.py``: the breaker script (operators' commands, reads and the leader's sweep);
* ``model.py``: ``BreakerConfig``, ``FailureThreshold``, ``BreakerStats``,
  ``BreakerTransition``;
* ``events.py``: the ``breaker-events`` leader service (state changes to the
  ``feature_event`` hook and the metrics adapter; the sweep that lets go what a damaged
  breaker held).

Semantics: docs/breakers.md.
"""

from .events import EVENT_NAME, BreakerEvents
from .manager import OPTION, CircuitBreaker, CircuitBreakerManager
from .model import (
    BreakerConfig,
    BreakerStats,
    BreakerTransition,
    FailureThreshold,
)

__all__ = [
    "EVENT_NAME",
    "OPTION",
    "BreakerConfig",
    "BreakerEvents",
    "BreakerStats",
    "BreakerTransition",
    "CircuitBreaker",
    "CircuitBreakerManager",
    "FailureThreshold",
]
