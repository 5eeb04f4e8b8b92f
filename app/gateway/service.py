"""Running the gateway: in this process (`herd gateway`) or as a child of `herd up`."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence

import uvicorn
from fastapi import APIRouter

from app.common.listen import bind_listen_socket
from app.config import Settings
from app.db.database import Database
from app.gateway.app import create_app
from app.processes.launcher import Service

# Seconds a stopping gateway lets streams in flight finish before it closes them.
GRACEFUL_SHUTDOWN_S = 10
# How long the request log's writer thread may hold the GIL while the event loop waits for
# it (Python's default is 5 ms: every socket call of the loop could stall it that long).
GIL_SWITCH_INTERVAL_S = 0.0005


def _local(host: str) -> str:
    """An address this machine can reach the gateway on, for health checks and links."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def gateway_service(settings: Settings) -> Service:
    """The gateway as a child process of `herd up`; healthy when /health answers 200."""
    host, port = settings.gateway_host, settings.gateway_port
    base = f"http://{_local(host)}:{port}"
    return Service(
        name="gateway",
        argv=[sys.executable, "-m", "app.cli", "gateway", "--host", host, "--port", str(port)],
        health_url=f"{base}/health",
        public_url=f"{base}/v1",
        log_file=settings.logs_dir / "gateway.log",
    )


def run_gateway(
    settings: Settings,
    database: Database,
    echo: Callable[[str], None],
    *,
    routers: Sequence[APIRouter],
) -> int:
    """Serve until SIGINT/SIGTERM; the socket is bound first so port 0 reports its port.
    routers: mounted beside the gateway's own (the caller's choice: the admin API)."""
    host, port = settings.gateway_host, settings.gateway_port
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    sock = bind_listen_socket(host, port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, database, routers),
        log_level=settings.log_level.lower(),
        access_log=False,  # calls are in the request log; uvicorn's line adds nothing
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    # Everything built so far (modules, the app and its routes, pydantic schemas) lives as
    # long as the process: moved out of the collector's sight, a full collection walks only
    # what calls create. Without this, each one walked ~180k objects, 0.2-0.4 s on this
    # machine under load, every few thousand calls (bench/RESULTS.md, "Gateway overhead").
    gc.freeze()
    echo(f"gateway: http://{_local(host)}:{port}/v1")
    server.run(sockets=[sock])
    return 0
