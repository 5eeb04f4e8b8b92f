"""Keep the worker's row true: publish on every state change and at least every heartbeat.

Every write is the whole current picture, taken and written under one lock, so writes from
the loader and the heartbeat thread can interleave without an older picture landing last.
A database error is logged and the next heartbeat tries again: it never stops the worker.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from app.worker.registration import WorkerRegistry, WorkerRow
from app.worker.resources import VramProbe, rss_bytes
from app.worker.state import WorkerState

logger = logging.getLogger(__name__)


class Reporter:
    """Owns the worker's row id and writes WorkerState into it."""

    def __init__(
        self,
        registry: WorkerRegistry,
        state: WorkerState,
        *,
        host: str,
        url: str,
        log_path: str | None,
    ) -> None:
        self.registry = registry
        self.state = state
        self.host = host
        self.url = url
        self.log_path = log_path
        self.worker_id: int | None = None
        self._lock = threading.Lock()
        self._vram = VramProbe()

    def snapshot(self) -> WorkerRow:
        state = self.state
        row = WorkerRow(
            host=self.host,
            url=self.url,
            pid=state.pid,
            state=state.status,
            alias=state.alias,
            deployment_id=state.deployment_id,
            model_id=state.model_id,
            log_path=self.log_path,
            error=state.error,
            rss_bytes=rss_bytes(),
        )
        engine = state.engine
        if engine is None:
            return row
        info, stats = engine.info, engine.stats()
        return WorkerRow(
            **{
                **row.values(),
                "gpu_offload_supported": info.gpu_offload_supported,
                "n_gpu_layers_offloaded": info.n_gpu_layers_offloaded,
                "slots_total": stats.slots_total,
                "slots_busy": stats.slots_busy,
                "queue_length": stats.queue_length,
                "tokens_per_second": stats.tokens_per_second,
                "vram_bytes": self._vram.read(info.n_gpu_layers_offloaded),
            }
        )

    def register(self) -> int:
        """Insert the row; raises if the database cannot be reached (nothing to serve then)."""
        with self._lock:
            self.worker_id = self.registry.insert(self.snapshot())
            return self.worker_id

    def publish(self) -> bool:
        """Write the current picture; False (logged) if the database refused."""
        with self._lock:
            try:
                row = self.snapshot()
                if self.worker_id is None or not self.registry.update(self.worker_id, row):
                    # Someone removed the row (a stale-row sweep during an outage): re-register.
                    self.worker_id = self.registry.insert(row)
                    logger.warning("worker row was missing; registered again as %d", self.worker_id)
                return True
            except SQLAlchemyError as exc:
                logger.warning("could not write the worker row (will retry): %s", exc)
                return False

    def publish_until(self, deadline_s: float, retry_s: float = 0.5) -> bool:
        """Publish, retrying until deadline_s from now: for states that must land (failed)."""
        end = time.monotonic() + deadline_s
        while not self.publish():
            if time.monotonic() >= end:
                return False
            time.sleep(retry_s)
        return True

    def deregister(self, attempts: int = 5, retry_s: float = 0.5) -> bool:
        with self._lock:
            worker_id = self.worker_id
            if worker_id is None:
                return True
            for attempt in range(attempts):
                try:
                    self.registry.delete(worker_id)
                    self.worker_id = None
                    return True
                except SQLAlchemyError as exc:
                    logger.warning("could not delete the worker row (try %d): %s", attempt + 1, exc)
                    time.sleep(retry_s)
            return False


class Heartbeat:
    """A daemon thread calling reporter.publish() every interval_s until stopped."""

    def __init__(self, reporter: Reporter, interval_s: float) -> None:
        self.reporter = reporter
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="herd-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.reporter.publish()
            except Exception:  # never let a surprise end the heartbeats
                logger.exception("heartbeat failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
