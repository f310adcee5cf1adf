"""The job function of the RQ adapter (RQ refuses functions of ``__main__``)."""

from __future__ import annotations

from typing import Any

CTL: Any = None  # the worker's Ctl, set by rq_peer.py


def noop(data: Any) -> None:
    CTL.hit(data)
    CTL.done()
