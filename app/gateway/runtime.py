"""Everything one gateway process runs: its database engine, routing state, balancer,
cache, request log, HTTP client to the workers, and the background tasks that feed them.
Built in the app's lifespan, never at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import SQLAlchemyError

from app.batches.launch import watch_batches
from app.batches.store import BatchStore
from app.config import Settings
from app.db.database import Database
from app.db.engine import sqlalchemy_url
from app.gateway.balancer import Balancer
from app.gateway.batch_lines import BatchLines
from app.gateway.batch_marking import BatchCredentials
from app.gateway.cache import ResponseCache
from app.gateway.cold_start import ColdStart
from app.gateway.demand import Demand
from app.gateway.embedding_calls import EmbeddingCalls
from app.gateway.feedback import FeedbackStore
from app.gateway.metrics import GatewayMetrics
from app.gateway.process_metrics import ProcessRestartMetrics
from app.gateway.proxy import Proxy
from app.gateway.request_log import RequestLog
from app.gateway.retention import run_retention
from app.gateway.routing import RoutingState
from app.gateway.semantic_cache import SemanticCache
from app.gateway.spool import Spool
from app.gateway.upstream import Upstream
from app.gateway.vector_store import VectorStore
from app.gateway.worker_client import WorkerClient

logger = logging.getLogger(__name__)

# A database that does not answer must not hold a request-log flush or a feedback click
# for minutes: give up connecting after this long (then spool, or answer 503).
DB_CONNECT_TIMEOUT_S = 3


def gateway_engine(url: str) -> Engine:
    return create_engine(
        sqlalchemy_url(url),
        pool_pre_ping=True,
        pool_size=8,
        connect_args={"connect_timeout": DB_CONNECT_TIMEOUT_S},
    )


class GatewayRuntime:
    """The gateway's parts, wired together; start() and stop() bracket the app's life."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.engine = gateway_engine(database_url)
        self.routing = RoutingState(self.engine, settings)
        self.balancer = Balancer(
            queue_per_worker=settings.gateway_queue_per_worker,
            cooldown_s=settings.gateway_cooldown_s,
            affinity_size=settings.gateway_affinity_sessions,
        )
        self.cache = ResponseCache(settings.cache_max_entries)
        self.metrics = GatewayMetrics()
        self.process_restarts = ProcessRestartMetrics(self.engine)
        self.feedback = FeedbackStore(self.engine)
        self.log = RequestLog(
            self.engine,
            Spool(settings.spool_dir),
            flush_s=settings.log_flush_ms / 1000,
            batch_rows=settings.log_batch_rows,
            redact=settings.redact_text,
            memory_max_rows=settings.log_memory_max_rows,
        )
        self.client = WorkerClient(
            max_connections=settings.gateway_max_connections,
            connect_timeout_s=settings.gateway_connect_timeout_s,
            # A worker host gone silent is dropped as fast as routing stops choosing it.
            dead_peer_s=settings.worker_live_s,
        )
        # Waiting calls per alias for autoscalers, and the scale-from-zero hold.
        self.demand = Demand(self.engine, self.routing, self.balancer)
        self.upstream = Upstream(
            settings, self.routing, self.balancer, self.log, self.metrics, self.client,
            cold_start=ColdStart(settings, self.routing, self.balancer, self.demand),
        )  # fmt: skip
        self.embeddings = EmbeddingCalls(self.upstream)
        self.semantic = SemanticCache(VectorStore(self.engine), self.embeddings)
        self.proxy = Proxy(settings, self.upstream, self.cache, self.semantic)
        self.batch_credentials = BatchCredentials(self.engine)
        # Each batch line to the fleet once: joined in flight, answered again, committed.
        self.batch_lines = BatchLines(
            BatchStore(self.engine), commit_s=settings.log_flush_ms / 1000
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if not await asyncio.to_thread(self.routing.refresh):
            logger.warning("starting without routing state; calls get 503 until it loads")
        self._tasks = [
            asyncio.create_task(self.routing.run(), name="herd-routing-refresh"),
            asyncio.create_task(self.log.run(), name="herd-request-log"),
            asyncio.create_task(self.batch_lines.run(), name="herd-batch-lines"),
            asyncio.create_task(self.demand.run(), name="herd-demand"),
            asyncio.create_task(
                self.upstream.key_limits.run(
                    self.engine,
                    lambda: self.routing.snapshot.key_rules,
                    self.settings.gateway_refresh_s,
                ),
                name="herd-key-usage",
            ),
            # Batches whose runner died get a new one (resuming where they were).
            asyncio.create_task(watch_batches(self.engine, self.settings), name="herd-batches"),
        ]
        days = self.settings.text_retention_days
        if days is not None:
            retention = run_retention(self.engine, days, self.settings.retention_interval_s)
            self._tasks.append(asyncio.create_task(retention, name="herd-text-retention"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(SQLAlchemyError):
            await asyncio.to_thread(self.demand.withdraw)
        await self.semantic.drain()
        # Hand this replica's last key usage counts to the others.
        await asyncio.to_thread(self.upstream.key_limits.sync, self.engine, set())
        await self.log.close()
        await self.batch_lines.commit()
        await self.client.close()
        self.engine.dispose()

    def gauges(self) -> list[tuple[str, str, float]]:
        snapshot = self.routing.snapshot
        return [
            ("herd_gateway_outstanding_requests", "Calls in flight to workers (queue depth).",
             float(self.balancer.total_outstanding())),
            ("herd_gateway_live_workers", "Workers routable now.",
             float(len(snapshot.live_worker_ids))),
            ("herd_gateway_cache_entries", "Responses in the cache.", float(len(self.cache))),
            ("herd_gateway_log_pending_rows", "Request rows not yet written.",
             float(self.log.pending_rows)),
            ("herd_gateway_log_spooled_rows", "Request rows on disk awaiting the database.",
             float(self.log.spool.rows)),
            ("herd_gateway_log_held_rows",
             "Request rows held in memory: database unreachable and the spool disk refuses them.",
             float(self.log.held_rows)),
            ("herd_gateway_log_lost_rows",
             "Request rows dropped since start (database down, spool disk full, memory bound).",
             float(self.log.lost_rows)),
            ("herd_gateway_spool_writable", "0 while the spool's disk refuses writes (full).",
             0.0 if self.log.spool_error else 1.0),
            ("herd_gateway_database_up", "1 when the last routing refresh reached the database.",
             1.0 if self.routing.database_ok else 0.0),
        ]  # fmt: skip


def database_url(settings: Settings, database: Database | None) -> tuple[str, Database | None]:
    """The URL to use and the Database this call opened (to close), if any."""
    if database is not None:
        return database.url, None
    opened = Database.open(settings)
    return opened.url, opened
