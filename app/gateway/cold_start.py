"""Scale from zero: hold a call whose alias has a deployment but no live worker yet.

The call waits (counted as waiting, so autoscalers see the demand) until a worker of the
alias turns ready in the routing state, for at most HERD_GATEWAY_COLD_START_S; then it is
served, or answered 503 naming the alias and the wait.
"""

from __future__ import annotations

import asyncio
import time

from app.config import Settings
from app.gateway.balancer import AllBusyError, Balancer, NoLiveWorkerError, Pick
from app.gateway.demand import Demand
from app.gateway.errors import all_busy
from app.gateway.routing import AliasRoute, RoutingState
from app.openai_api.errors import unavailable

# How often a held call looks at the routing state again (which reloads every refresh_s).
POLL_S = 0.05


class ColdStart:
    """Holds calls for aliases without a live worker; one per gateway process."""

    def __init__(
        self, settings: Settings, routing: RoutingState, balancer: Balancer, demand: Demand
    ) -> None:
        self.settings = settings
        self.routing = routing
        self.balancer = balancer
        self.demand = demand

    def applies(self, route: AliasRoute) -> bool:
        """Whether a call to route may wait: holding enabled and a deployment to start (a
        failed one will not start by itself: its callers get the 503 at once)."""
        return self.settings.gateway_cold_start_s > 0 and any(
            d.id is not None and d.state != "failed" for d in route.deployments
        )

    async def wait(
        self, route: AliasRoute, session: str | None, *, batch: bool = False
    ) -> tuple[AliasRoute, Pick]:
        """The fresh route and a pick on it (for a batch line when batch) once a worker is
        ready; ApiError otherwise."""
        limit_s = self.settings.gateway_cold_start_s
        deadline = time.monotonic() + limit_s
        with self.demand.holding(route.alias):
            while time.monotonic() < deadline:
                await asyncio.sleep(POLL_S)
                route = self.routing.snapshot.routes.get(route.alias, route)
                try:
                    return route, self.balancer.pick(route, session, batch=batch)
                except NoLiveWorkerError:
                    continue
                except AllBusyError:
                    raise all_busy(route.alias, self.settings.gateway_retry_after_s) from None
        raise unavailable(
            f"no worker for {route.alias!r} became ready within {limit_s:g} s "
            "(HERD_GATEWAY_COLD_START_S); its deployment has no live worker: check it on the "
            "Deployments page, or retry once its replicas are up",
            "no_live_worker",
            self.settings.gateway_retry_after_s,
        )
