"""Where a new job goes.

1. ``region="eu-west-1"``: that region's own queue (``<name>/eu-west-1``), where it is
   stored and run; refused if the job's tenant may not use that region.
2. else, a ``tenant_id`` whose allowed regions are not all of them: the own queue of an
   allowed region (the primary if it is allowed, else the allowed region with the
   lowest priority number that is reachable); refused when none is configured.
3. else the global queue at the current primary (replicated; it follows failovers).

A job pinned to a region stays there: it is not replicated (its region is its only
home; ``replicate_job`` copies it elsewhere as a fenced copy, never run there) and does
not move on failover.

The tenant lookup is a protocol, ``AllowedRegions``: any object with
``allowed_regions_for(tenant_id)`` (sync or async) returning the tenant's regions, or
``None`` for "anywhere"; it raises for an unknown tenant. ``TenantRegionMap`` is a
simple one from a dict.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ...errors import ConfigurationError
from ...options import check_text
from .config import check_region_name
from .errors import RegionNotAllowedError

if TYPE_CHECKING:
    from .topology import Topology

__all__ = ["GLOBAL", "AllowedRegions", "Router", "TenantRegionMap"]

#: What ``Router.route`` returns for the global queue (else: a region's name).
GLOBAL = ""


@runtime_checkable
class AllowedRegions(Protocol):
    """Where a tenant's jobs may be stored and run."""

    def allowed_regions_for(self, tenant_id: str) -> Any:
        """The tenant's regions (a sequence of names), ``None`` for any region; may be a
        coroutine. Raises for an unknown tenant (the job is then refused)."""


class TenantRegionMap:
    """``AllowedRegions`` from a mapping ``tenant_id -> regions`` (``None``: anywhere).

    Example::

        tenants = TenantRegionMap({"acme": ["eu-west-1"], "globex": None})

    An unknown tenant raises ``KeyError`` (its jobs are refused), unless ``default`` is
    given: the regions of every tenant not in the map (``None``: anywhere).
    """

    _MISSING: Any = object()

    def __init__(self, tenants: Mapping[str, Iterable[str] | None], default: Any = _MISSING):
        self._map: dict[str, tuple[str, ...] | None] = {}
        for tenant, regions in tenants.items():
            check_text(tenant, "tenant_id", max_len=256)
            self._map[tenant] = _regions(regions, f"regions of tenant {tenant!r}")
        self._default = (
            default if default is self._MISSING else _regions(default, "default regions")
        )

    def allowed_regions_for(self, tenant_id: str) -> tuple[str, ...] | None:
        if tenant_id in self._map:
            return self._map[tenant_id]
        if self._default is self._MISSING:
            raise KeyError(f"unknown tenant {tenant_id!r}")
        value: tuple[str, ...] | None = self._default
        return value


def _regions(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{what} must be a list of region names or None")
    return tuple(check_region_name(r, what) for r in value)


def _lookup(source: Any) -> Callable[[str], Any] | None:
    if source is None:
        return None
    fn = getattr(source, "allowed_regions_for", None)
    if callable(fn):
        return fn  # type: ignore[no-any-return]
    if callable(source):
        return source  # type: ignore[no-any-return]
    raise ConfigurationError(
        "allowed_regions must have allowed_regions_for(tenant_id), or be such a function, "
        f"got {type(source).__name__}"
    )


class Router:
    """Decides the queue of a new job (see the module docstring)."""

    def __init__(self, regions: Sequence[str], allowed: Any = None) -> None:
        self.regions = list(regions)
        self._lookup = _lookup(allowed)

    async def allowed_for(self, tenant_id: str) -> tuple[str, ...] | None:
        """The regions of ``tenant_id`` (None: any), from the lookup."""
        if self._lookup is None:
            return None
        try:
            got = self._lookup(tenant_id)
            if inspect.isawaitable(got):
                got = await got
        except Exception as exc:
            raise RegionNotAllowedError(
                f"tenant {tenant_id!r}: its regions could not be looked up ({type(exc).__name__}: "
                f"{exc}); the job was not added"
            ) from exc
        return _regions(got, f"allowed regions of tenant {tenant_id!r}")

    async def route_in(self, topo: Topology, opts: dict[str, Any]) -> str:
        """``route`` for a job's options (its ``region`` is taken out of them), ranking
        the allowed regions by reachability, then priority, then configuration order."""
        order = {c.name: i for i, c in enumerate(topo.copies)}

        def rank(name: str) -> tuple[int, int, int]:
            c = topo.by_name[name]
            return (0 if c.reachable else 1, c.priority, order[name])

        return await self.route(
            opts.pop("region", None), opts.get("tenant_id"), primary=topo.view.primary, rank=rank
        )

    async def route(
        self,
        region: Any,
        tenant_id: Any,
        *,
        primary: str | None,
        rank: Callable[[str], tuple[int, ...]],
    ) -> str:
        """The region whose own queue takes the job, or ``GLOBAL``. ``rank(region)``
        orders the allowed regions (lower first: reachable, then priority)."""
        if region is not None:
            check_region_name(region, "region")
            if region not in self.regions:
                raise ConfigurationError(
                    f"region {region!r} is not one of the regions of this queue: "
                    f"{', '.join(self.regions)}"
                )
        allowed = None
        if tenant_id is not None and self._lookup is not None:
            allowed = await self.allowed_for(str(tenant_id))
        if region is not None:
            if allowed is not None and region not in allowed:
                raise RegionNotAllowedError(
                    f"tenant {tenant_id!r} may not place jobs in region {region!r} (its "
                    f"regions: {', '.join(allowed) or 'none'}); the job was not added"
                )
            return str(region)
        if allowed is None or set(self.regions) <= set(allowed):
            return GLOBAL
        usable = [r for r in self.regions if r in allowed]
        if not usable:
            raise RegionNotAllowedError(
                f"tenant {tenant_id!r} may only use regions {', '.join(allowed) or '(none)'}, "
                f"none of which is a region of this queue ({', '.join(self.regions)}); the "
                "job was not added"
            )
        if primary in usable:
            return primary
        return min(usable, key=rank)
