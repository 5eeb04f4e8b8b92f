"""What the worker is doing right now: loading, ready, failed or stopping; shared by HTTP
handlers, the loader thread and the heartbeat."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from app.engine.protocol import Engine

Status = Literal["loading", "ready", "failed", "stopping"]


@dataclass
class WorkerState:
    """The one mutable record of a worker process; transitions are guarded by a lock."""

    alias: str
    model_path: str
    model_id: int | None = None
    deployment_id: int | None = None
    status: Status = "loading"
    error: str | None = None
    engine: Engine | None = None
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    # Re-entrant: set_stopping runs in a signal handler, which may interrupt a holder.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def set_ready(self, engine: Engine) -> None:
        with self._lock:
            self.engine = engine
            if self.status == "loading":
                self.status = "ready"

    def set_failed(self, reason: str) -> None:
        with self._lock:
            self.status, self.error = "failed", reason

    def set_stopping(self) -> None:
        with self._lock:
            if self.status in ("loading", "ready"):
                self.status = "stopping"

    @property
    def serving(self) -> Engine | None:
        """The engine, when requests may be sent to it."""
        return self.engine if self.status == "ready" else None

    def health(self) -> dict[str, Any]:
        """The /health body."""
        with self._lock:
            status, error, engine = self.status, self.error, self.engine
        body: dict[str, Any] = {
            "status": status,
            "alias": self.alias,
            "model": self.model_path,
            "model_id": self.model_id,
            "deployment_id": self.deployment_id,
            "pid": self.pid,
            "uptime_s": round(time.time() - self.started_at, 3),
            "error": error,
        }
        if engine is not None:
            info, stats = engine.info, engine.stats()
            body.update(
                n_ctx=info.n_ctx,
                n_ctx_train=info.n_ctx_train,
                n_layer=info.n_layer,
                gpu_offload_supported=info.gpu_offload_supported,
                n_gpu_layers_requested=info.n_gpu_layers_requested,
                n_gpu_layers_offloaded=info.n_gpu_layers_offloaded,
                slots_total=stats.slots_total,
                slots_busy=stats.slots_busy,
                queue_length=stats.queue_length,
                max_queue=stats.max_queue,
                tokens_per_second=stats.tokens_per_second,
                prompt_tokens_total=stats.prompt_tokens,
                cached_prompt_tokens_total=stats.cached_prompt_tokens,
                prefix_hit_rate=stats.prefix_hit_rate,
                batch_slots_busy=stats.batch_busy,
                batch_queue_length=stats.batch_waiting,
                preemptions_total=stats.preemptions,
            )
        return body
