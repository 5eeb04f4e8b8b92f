"""/health and /metrics: what the gateway knows and counts, for probes and Prometheus."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from app.gateway.request_context import runtime_of


def operations_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health", tags=["operations"], summary="Is the gateway up, and what it knows")
    async def health(request: Request) -> dict[str, Any]:
        runtime = runtime_of(request)
        snapshot = runtime.routing.snapshot
        return {
            "status": "ok",
            "database": "ok" if runtime.routing.database_ok else "unreachable",
            "routing_loaded": snapshot.loaded,
            "routing_age_s": round(time.monotonic() - snapshot.loaded_at, 3)
            if snapshot.loaded
            else None,
            "aliases": sorted(snapshot.routes),
            "live_workers": len(snapshot.live_worker_ids),
            "outstanding_requests": runtime.balancer.total_outstanding(),
            "log_pending_rows": runtime.log.pending_rows,
            "log_spooled_rows": runtime.log.spool.rows,
            # Non-zero only when the database is down and the spool's disk is full as well.
            "log_held_rows": runtime.log.held_rows,
            "log_lost_rows": runtime.log.lost_rows,
            "spool_error": runtime.log.spool_error,
            # Why the semantic cache is off (no pgvector, say); null when usable.
            "semantic_cache_off_reason": runtime.semantic.off_reason,
        }

    @router.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        runtime = runtime_of(request)
        await runtime.process_restarts.read()
        text = runtime.metrics.render(runtime.gauges())
        text += "\n".join(runtime.process_restarts.lines()) + "\n"
        return PlainTextResponse(
            text,
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    return router
