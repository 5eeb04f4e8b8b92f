"""The supervisor's GET /health: 200 while its reconciliations succeed, 503 otherwise."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from app.supervisor.errors import SupervisorError

# Healthy while the last successful reconciliation is at most this many polls old.
STALE_POLLS = 20
MIN_STALE_S = 10.0


class SupervisorStatus:
    """What /health reports; written by the loop, read by the HTTP thread."""

    def __init__(self, node: str, poll_s: float) -> None:
        self.node = node
        self.stale_s = max(MIN_STALE_S, STALE_POLLS * poll_s)
        self._lock = threading.Lock()
        self._last_ok: float | None = None
        self._workers = 0
        self._error: str | None = None

    def reconciled(self, workers: int) -> None:
        with self._lock:
            self._last_ok = time.monotonic()
            self._workers = workers
            self._error = None

    def failed(self, error: str) -> None:
        with self._lock:
            self._error = error

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            age = None if self._last_ok is None else time.monotonic() - self._last_ok
            healthy = age is not None and age <= self.stale_s
            state = "ready" if healthy else ("starting" if age is None else "degraded")
            return healthy, {
                "status": state,
                "node": self.node,
                "workers": self._workers,
                "last_reconcile_s_ago": None if age is None else round(age, 3),
                "error": self._error,
            }


class HealthServer:
    """A tiny HTTP server in a daemon thread; port 0 picks a free port."""

    def __init__(self, host: str, port: int, status: SupervisorStatus) -> None:
        self.host = host
        self.port = port
        self.status = status
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        status = self.status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/health":
                    self.send_error(404)
                    return
                healthy, body = status.snapshot()
                data = json.dumps(body).encode()
                self.send_response(200 if healthy else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # launchers poll /health often; their requests are not news

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            raise SupervisorError(
                f"cannot serve the supervisor's /health on {self.host}:{self.port}: {exc}; "
                "set HERD_SUPERVISOR_PORT to a free port"
            ) from exc
        self.port = int(self._server.server_address[1])
        threading.Thread(
            target=self._server.serve_forever, name="supervisor-health", daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
