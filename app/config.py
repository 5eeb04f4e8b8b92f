"""One Settings object for every herd process, read from HERD_* environment variables."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The liveness rule's default, also used where no Settings is at hand (Deployments' views).
DEFAULT_WORKER_LIVE_S = 5.0

LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")


def parse_labels(text: str) -> dict[str, str]:
    """'gpu=h100,zone=a' -> {'gpu': 'h100', 'zone': 'a'}; '' -> {}. Raises ValueError."""
    labels: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not LABEL_PATTERN.match(key) or (value and not LABEL_PATTERN.match(value)):
            raise ValueError(
                f"label {part!r} is not key=value (letters, digits, . _ / -), "
                "e.g. HERD_NODE_LABELS=gpu=h100,zone=a"
            )
        labels[key] = value
    return labels


class Settings(BaseSettings):
    """Herd's configuration. Built once by whoever runs (CLI, dashboard) and passed down."""

    model_config = SettingsConfigDict(env_prefix="HERD_", extra="ignore")

    home: Path = Field(
        default=Path(".herd"),
        description="Folder for Herd's own data: the embedded PostgreSQL, logs, spools.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "Any postgresql:// URL. When set, Herd uses that server and starts none; "
            "when unset, Herd runs an embedded PostgreSQL under HERD_HOME."
        ),
    )
    models_dir: Path = Field(
        default=Path("models_store"),
        description="Folder scanned recursively for .gguf files (the model store).",
    )
    dashboard_host: str = Field(
        default="127.0.0.1",
        description="Address the Streamlit dashboard binds to; binding elsewhere is explicit.",
    )
    dashboard_port: int = Field(default=8501, ge=1, le=65535, description="Dashboard port.")
    log_level: str = Field(default="INFO", description="Python logging level for herd processes.")
    cpu_extra_buffers: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "llama.cpp's extra CPU buffer types (repacked weights, AMX): auto leaves them off "
            "on a CPU that reports AMX under a hypervisor, where llama.cpp's AMX matmul has "
            "crashed workers (app/engine/cpu_buffers.py); on or off decide it outright."
        ),
    )
    worker_heartbeat_s: float = Field(
        default=1.0,
        gt=0,
        le=2.0,
        description="Seconds between a worker's heartbeats to the `workers` table (at most 2).",
    )
    worker_shutdown_grace_s: float = Field(
        default=5.0,
        ge=0,
        description=(
            "On SIGTERM, seconds a worker lets running requests finish before it cancels them."
        ),
    )
    # The supervisor: deployments -> worker processes on this machine.
    node_name: str = Field(
        default_factory=socket.gethostname,
        description=(
            "Name of this machine for the supervisor; a deployment pinned to a node runs only "
            "there. Default: the host name."
        ),
    )
    supervisor_host: str = Field(
        default="127.0.0.1", description="Address of the supervisor's /health endpoint."
    )
    supervisor_port: int = Field(
        default=8510, ge=0, le=65535, description="Port of the supervisor's /health endpoint."
    )
    supervisor_poll_s: float = Field(
        default=0.5,
        gt=0,
        le=1.0,
        description="Longest wait between reconciliations when no change is notified.",
    )
    worker_host: str = Field(
        default="127.0.0.1", description="Address the workers the supervisor starts bind to."
    )
    worker_stop_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description=(
            "Seconds a worker has, beyond worker_shutdown_grace_s, to exit after SIGTERM "
            "before the supervisor kills it."
        ),
    )
    restart_backoff_s: float = Field(
        default=1.0, gt=0, description="Delay before restarting a crashed worker the first time."
    )
    restart_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Longest delay between restarts (the backoff doubles)."
    )
    restart_max_failures: int = Field(
        default=5,
        ge=1,
        description="Consecutive worker failures after which a deployment is marked failed.",
    )
    restart_stable_s: float = Field(
        default=30.0,
        ge=0,
        description="A replica ready this long resets its deployment's failure count.",
    )
    worker_live_s: float = Field(
        default=DEFAULT_WORKER_LIVE_S,
        gt=0,
        description=(
            "A worker is live while its last heartbeat is younger than this: the gateway "
            "routes to it, the dashboard shows it ready and the supervisor counts it ready. "
            "The one liveness rule; heartbeats come every second."
        ),
    )
    worker_heartbeat_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "A ready worker silent this long that no longer answers /health is killed as "
            "hung and restarted (it stopped being live after worker_live_s)."
        ),
    )
    worker_logs_kept: int = Field(
        default=20, ge=1, description="Worker log files kept per deployment; older ones go."
    )
    # Several machines: nodes, labels, placement, and how workers are reached.
    node_labels: str = Field(
        default="",
        description=(
            "Labels of this node, as k=v,k2=v2 (e.g. gpu=h100,zone=a); deployments that "
            "require labels are placed only on nodes that carry them all."
        ),
    )
    rollout_grace_s: float = Field(
        default=3600.0,
        ge=0,
        description=(
            "After a promotion, how long the previous version stays deployed at weight 0 for "
            "an instant rollback before it is stopped."
        ),
    )
    canary_guard_min_requests: int = Field(
        default=50,
        ge=1,
        description=(
            "Requests the canary and the current version each need since the canary started "
            "before the guard compares them."
        ),
    )
    canary_guard_error_margin: float = Field(
        default=0.05,
        ge=0,
        description=(
            "The guard sets a canary to weight 0 when its error rate exceeds the current "
            "version's by more than this (0.05: five percentage points)."
        ),
    )
    canary_guard_p95_margin: float = Field(
        default=0.5,
        ge=0,
        description=(
            "... or when its p95 latency exceeds the current version's by more than this "
            "share (0.5: 50 % slower)."
        ),
    )
    eval_answer_prompts: int = Field(
        default=8,
        ge=0,
        description=(
            "Prompts of the evaluation's prompt set each model answers greedily, for reading "
            "side by side (0: none); bounded so that an evaluation stays quick."
        ),
    )
    eval_answer_tokens: int = Field(
        default=64,
        ge=1,
        description="The most tokens each greedy evaluation answer may have.",
    )
    job_heartbeat_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Seconds between a background job's heartbeats (progress, log tail); also how "
            "often it checks for a cancel request."
        ),
    )
    job_stale_s: float = Field(
        default=15.0,
        gt=0,
        description=(
            "A running job whose heartbeat is older than this is dead (its process was "
            "killed): it is marked failed and its temporary files are removed."
        ),
    )
    batch_file_max_bytes: int = Field(
        default=200 * 1024 * 1024,
        gt=0,
        description="Largest file `POST /v1/files` accepts (a batch's JSONL), in bytes.",
    )
    batch_concurrency: int = Field(
        # Twice a worker's usual 4 slots: the worker's batch lane then holds the next lines,
        # so a slot never idles while a finished line's answer travels back and the next one
        # comes in (with only as many in flight as slots, the path reached 0.82-0.86x of the
        # engine's own throughput). Queued batch lines never delay live ones.
        default=8,
        ge=1,
        description="Lines of one batch the batch runner keeps in flight through the gateway.",
    )
    batch_max_attempts: int = Field(
        default=5,
        ge=1,
        description=(
            "Attempts per batch line when the gateway answers 5xx (a worker died mid-answer); "
            "an unreachable gateway or 429 is waited out without counting."
        ),
    )
    batch_give_up_s: float = Field(
        default=600.0,
        gt=0,
        description=(
            "A batch runner that has had no database, or no gateway accepting connections, "
            "for this long ends; the batch stays resumable (its progress is in PostgreSQL) "
            "and a gateway's watch starts a new runner once both are back."
        ),
    )
    batch_watch_s: float = Field(
        default=2.0,
        gt=0,
        description=(
            "How often a gateway looks for unfinished batches whose runner is gone, and "
            "starts a new runner (resuming where the batch was)."
        ),
    )
    node_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "A node whose supervisor has not heartbeated for this long is dead: its "
            "deployments' replicas are placed on other live nodes that match."
        ),
    )
    advertise_url: str | None = Field(
        default=None,
        description=(
            "URL other hosts use to reach a worker (http://host or http://host:port; without "
            "a port the worker's real port is added). Default: from the bind address, with "
            "the host's primary address for a wildcard bind."
        ),
    )

    # The gateway: OpenAI-compatible API, routing, response cache, request log.
    gateway_host: str = Field(
        default="127.0.0.1", description="Address the gateway binds to; elsewhere is explicit."
    )
    gateway_port: int = Field(default=8000, ge=0, le=65535, description="Gateway port.")
    gateway_refresh_s: float = Field(
        default=0.5,
        gt=0,
        le=1.0,
        description="Seconds between reloads of routing state (aliases, workers, keys) from SQL.",
    )
    gateway_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait to connect to a worker."
    )
    gateway_first_token_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest wait for a worker's first token (its queue and prompt included).",
    )
    gateway_inter_token_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest silence between two streamed tokens."
    )
    gateway_max_attempts: int = Field(
        default=3,
        ge=1,
        description="Workers tried per request before the first token (1 + retries).",
    )
    gateway_cooldown_s: float = Field(
        default=10.0, ge=0, description="How long a worker that failed gets no new requests."
    )
    gateway_queue_per_worker: int = Field(
        default=16,
        ge=0,
        description=(
            "Requests the gateway lets wait per worker beyond its slots; when every worker of "
            "an alias is that full, calls get 429 with Retry-After."
        ),
    )
    gateway_retry_after_s: int = Field(
        default=1, ge=1, description="Retry-After seconds sent with 429 and 503 answers."
    )
    gateway_max_connections: int = Field(
        default=1024, ge=1, description="Pooled keep-alive connections to workers, all together."
    )
    gateway_affinity_sessions: int = Field(
        default=100_000, ge=0, description="Sessions whose worker the gateway remembers (LRU)."
    )
    cache_enabled: bool = Field(
        default=True,
        description="Response cache for aliases without their own setting (Routing page).",
    )
    cache_ttl_s: float = Field(
        default=300.0, gt=0, description="Cache lifetime for aliases without their own TTL."
    )
    cache_max_entries: int = Field(
        default=10_000, ge=0, description="Cached responses kept per gateway (LRU); 0: none."
    )
    log_flush_ms: float = Field(
        default=200.0, gt=0, description="Longest delay before request rows are written."
    )
    log_batch_rows: int = Field(
        default=500, ge=1, description="Request rows that trigger a write before the delay."
    )
    gateway_cold_start_s: float = Field(
        default=60.0,
        ge=0,
        description=(
            "How long a call waits for a worker when its alias has a deployment but no live "
            "worker (scale from zero); 0: answer 503 at once."
        ),
    )
    log_memory_max_rows: int = Field(
        default=50_000,
        ge=0,
        description=(
            "Request rows kept in memory while neither PostgreSQL nor the spool disk takes "
            "them (database down and disk full); beyond this the oldest are dropped and counted "
            "in /health and /metrics."
        ),
    )
    gateway_max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body the gateway accepts; larger ones get 413.",
    )

    # Access and privacy.
    redact_text: bool = Field(
        default=False,
        description=(
            "Replace emails, phone numbers and card-like numbers in prompts and responses "
            "with placeholders before the gateway stores them in `messages`."
        ),
    )
    text_retention_days: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Delete prompt and response text (`messages`) older than this many days; request "
            "metrics and feedback ratings stay. Unset: keep text forever."
        ),
    )
    retention_interval_s: float = Field(
        default=3600.0, gt=0, description="How often the gateway applies the text retention."
    )
    session_ttl_s: float = Field(
        default=8 * 3600.0, gt=0, description="A dashboard login lasts this long."
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed logins in a row after which an operator name is locked out.",
    )
    login_lockout_s: float = Field(
        default=60.0, gt=0, description="How long a locked-out operator name stays locked."
    )
    require_api_key: bool = Field(
        default=False,
        description="Refuse calls without a valid key even before any key has been created.",
    )
    gateway_url: str | None = Field(
        default=None,
        description=(
            "Base URL (without /v1) the dashboard's Chat page calls the gateway at. Default: "
            "http://<gateway_host>:<gateway_port>, with 127.0.0.1 for a wildcard host."
        ),
    )
    chat_api_key: SecretStr | None = Field(
        default=None,
        description=(
            "API key the Chat page sends as `Authorization: Bearer` once the gateway requires "
            "keys (create one with `herd keys create chat`). Unset: calls go without a key."
        ),
    )

    @field_validator("node_labels")
    @classmethod
    def _check_node_labels(cls, value: str) -> str:
        parse_labels(value)  # raises ValueError naming the bad part
        return value

    @property
    def node_label_map(self) -> dict[str, str]:
        """HERD_NODE_LABELS as a dict."""
        return parse_labels(self.node_labels)

    @property
    def gateway_base_url(self) -> str:
        """Where clients on this machine reach the gateway (HERD_GATEWAY_URL or host:port)."""
        if self.gateway_url:
            return self.gateway_url.rstrip("/").removesuffix("/v1")
        # A wildcard bind address is not something a client can connect to.
        host = self.gateway_host if self.gateway_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.gateway_port}"

    @property
    def home_dir(self) -> Path:
        """HERD_HOME as an absolute path."""
        return self.home.expanduser().resolve()

    @property
    def models_path(self) -> Path:
        """The model store as an absolute path."""
        return self.models_dir.expanduser().resolve()

    @property
    def pgdata_dir(self) -> Path:
        """Data folder of the embedded PostgreSQL."""
        return self.home_dir / "pgdata"

    @property
    def spool_dir(self) -> Path:
        """Where the gateway keeps request rows while PostgreSQL is unreachable."""
        return self.home_dir / "spool"

    @property
    def logs_dir(self) -> Path:
        """Folder for the log files of processes that herd starts."""
        return self.home_dir / "logs"
