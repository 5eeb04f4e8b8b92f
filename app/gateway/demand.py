"""How many calls wait at this gateway, per alias, published for autoscalers (KEDA).

A call waits while the gateway holds it for a cold start (no live worker yet) or while it
is queued beyond the slots of the worker it was sent to. Every second the counts that
changed, or are not zero, are upserted into `gateway_demand`; `herd_queued_requests(alias)`
sums the rows written in the last 10 seconds, so a dead gateway's counts fade out alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterator

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from app.gateway.balancer import Balancer
from app.gateway.routing import RoutingState

logger = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0
# Rows nobody has refreshed for this long (gateways long gone) are deleted.
PRUNE_AFTER_S = 3600

UPSERT_SQL = text(
    "INSERT INTO gateway_demand (gateway, alias, waiting, in_flight, updated_at) "
    "VALUES (:gateway, :alias, :waiting, :in_flight, now()) "
    "ON CONFLICT (gateway, alias) DO UPDATE SET waiting = excluded.waiting, "
    "in_flight = excluded.in_flight, updated_at = now()"
)
PRUNE_SQL = text(
    "DELETE FROM gateway_demand WHERE updated_at < now() - make_interval(secs => :age_s)"
)

Counts = dict[str, tuple[int, int]]  # alias -> (waiting, in_flight)


class Demand:
    """This gateway's waiting and in-flight calls per alias, and their publisher."""

    def __init__(self, engine: Engine, routing: RoutingState, balancer: Balancer) -> None:
        self.engine = engine
        self.routing = routing
        self.balancer = balancer
        # Host and pid make the row readable for operators; the uuid makes it unique.
        self.gateway_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: Counter[str] = Counter()
        self._published: Counts = {}

    @contextlib.contextmanager
    def holding(self, alias: str) -> Iterator[None]:
        """Count a call as waiting for alias while the block runs."""
        self.held[alias] += 1
        try:
            yield
        finally:
            self.held[alias] -= 1
            if self.held[alias] <= 0:
                del self.held[alias]

    def counts(self) -> Counts:
        """(waiting, in_flight) per alias now; read on the event loop like the balancer."""
        found: Counts = {}
        outstanding = self.balancer.outstanding
        for alias, route in self.routing.snapshot.routes.items():
            waiting = in_flight = 0
            for deployment in route.deployments:
                for worker in deployment.workers:
                    busy = outstanding.get(worker.id, 0)
                    in_flight += busy
                    waiting += max(0, busy - worker.slots_total)
            if waiting or in_flight:
                found[alias] = (waiting, in_flight)
        for alias, held in self.held.items():
            waiting, in_flight = found.get(alias, (0, 0))
            found[alias] = (waiting + held, in_flight + held)
        return found

    def publish(self, counts: Counts) -> None:
        """Upsert the counts that changed or are not zero (blocking: run it in a thread)."""
        rows = [
            {"gateway": self.gateway_id, "alias": alias, "waiting": w, "in_flight": f}
            for alias, (w, f) in counts.items()
        ]
        # An alias that went quiet gets one last row of zeros, then no more writes.
        rows += [
            {"gateway": self.gateway_id, "alias": alias, "waiting": 0, "in_flight": 0}
            for alias in self._published
            if alias not in counts
        ]
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(UPSERT_SQL, rows)
        self._published = dict(counts)

    def prune(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(PRUNE_SQL, {"age_s": PRUNE_AFTER_S})

    async def run(self) -> None:
        """Publish every second until cancelled; database errors are logged and retried."""
        ticks = 0
        while True:
            await asyncio.sleep(PUBLISH_EVERY_S)
            counts = self.counts()
            try:
                await asyncio.to_thread(self.publish, counts)
                if ticks % 600 == 0:
                    await asyncio.to_thread(self.prune)
            except SQLAlchemyError as exc:
                logger.debug("could not publish demand (will retry): %s", exc)
            ticks += 1

    def withdraw(self) -> None:
        """Delete this gateway's rows (at a clean stop)."""
        with self.engine.begin() as conn:
            conn.execute(
                text("DELETE FROM gateway_demand WHERE gateway = :gateway"),
                {"gateway": self.gateway_id},
            )


def queued_requests(engine: Engine, alias: str) -> int:
    """herd_queued_requests(alias): calls waiting at all live gateways."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT herd_queued_requests(:a)"), {"a": alias}).scalar_one())


def alias_demand(engine: Engine, alias: str) -> int:
    """herd_alias_demand(alias): calls in flight at all live gateways, served or waiting
    (KEDA's query: a busy alias with no queue must not look idle)."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT herd_alias_demand(:a)"), {"a": alias}).scalar_one())
