"""How a worker was asked to run: the `herd worker` flags, as one value."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.kv_snapshot_files import DEFAULT_MAX_BYTES
from app.engine.serving import ServingParams
from app.worker.advertise import check_advertise_url

DEFAULT_MAX_QUEUE = 16
DEFAULT_KV_SNAPSHOT_MAX_MB = DEFAULT_MAX_BYTES >> 20


@dataclass(frozen=True, kw_only=True)
class WorkerOptions(ServingParams):
    """One worker's settings: llama.cpp's (ServingParams) and the process's own; model is a
    path to a .gguf or a name in the model store."""

    model: str
    host: str = "127.0.0.1"
    port: int = 0
    alias: str | None = None
    deployment_id: int | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    log_path: str | None = None
    # The URL other hosts reach this worker at (http://host[:port]); None: from --host.
    advertise_url: str | None = None
    # Join (or create as 'external') the deployment for (alias, model): replicas started by
    # Kubernetes or an operator rather than by a supervisor.
    join: bool = False
    # Hot KV prefixes saved under HERD_HOME/kv_snapshots and restored by the next worker of
    # the same model and settings (engine/prefix_snapshots.py); the folder's bound in MiB.
    kv_snapshots: bool = True
    kv_snapshot_max_mb: int = DEFAULT_KV_SNAPSHOT_MAX_MB

    def __post_init__(self) -> None:
        problems = self.serving_problems()
        if not self.model:
            problems.append("--model is empty")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port {self.port} is not a port number")
        if self.max_queue < 0:
            problems.append("--max-queue is >= 0")
        if self.kv_snapshot_max_mb < 1:
            problems.append("--kv-snapshot-max-mb is >= 1 (--no-kv-snapshots turns them off)")
        if self.alias is not None and not self.alias.strip():
            problems.append("--alias is empty")
        if self.join and self.deployment_id is not None:
            problems.append("--join and --deployment-id exclude each other")
        if self.advertise_url is not None:
            try:
                check_advertise_url(self.advertise_url)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
