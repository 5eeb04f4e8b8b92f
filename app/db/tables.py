"""ORM tables: the schema every herd process and analyst shares.

The schema itself is created only by Alembic revisions under migrations/; these classes must
match them (a test runs Alembic's autogenerate and expects no difference).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Model(Base):
    """One GGUF file in the store: what its header says and whether it is valid."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # Path relative to the store, with forward slashes: the name operators use.
    name: Mapped[str] = mapped_column(Text, unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # sha256 is trusted while size and mtime are unchanged.
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    architecture: Mapped[str | None] = mapped_column(Text)
    parameter_count: Mapped[int | None] = mapped_column(BigInteger)
    file_type: Mapped[str | None] = mapped_column(Text)
    quantization: Mapped[str | None] = mapped_column(Text)
    context_length: Mapped[int | None] = mapped_column(Integer)
    block_count: Mapped[int | None] = mapped_column(Integer)
    embedding_length: Mapped[int | None] = mapped_column(Integer)
    head_count: Mapped[int | None] = mapped_column(Integer)
    head_count_kv: Mapped[int | None] = mapped_column(Integer)
    has_chat_template: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    status: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # What the memory estimate needs (bytes per layer, KV shape) so it runs without the file.
    layout: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    scanned_at: Mapped[datetime] = _now()
    created_at: Mapped[datetime] = _now()

    __table_args__ = (CheckConstraint("status IN ('valid', 'invalid', 'missing')", name="status"),)


class Deployment(Base):
    """What operators asked for: a model served under an alias by N replicas."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(Text, index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    replicas: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    n_gpu_layers: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    n_ctx: Mapped[int] = mapped_column(Integer, server_default=text("4096"))
    parallel: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    threads: Mapped[int | None] = mapped_column(Integer)
    main_gpu: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    tensor_split: Mapped[list[float] | None] = mapped_column(JSONB)
    traffic_weight: Mapped[int] = mapped_column(Integer, server_default=text("100"))
    state: Mapped[str] = mapped_column(Text, server_default=text("'active'"))
    # The last reason a replica failed; kept while the deployment recovers, for operators.
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    # Bumped by every roll: replicas of an older generation are replaced, one ready new
    # replica before each old one stops.
    generation: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    # Consecutive worker failures; the supervisor gives up (state 'failed') at its limit.
    failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # The machine whose supervisor runs it; NULL: every supervisor runs it.
    node: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("replicas >= 0", name="replicas"),
        CheckConstraint("n_gpu_layers >= -1", name="n_gpu_layers"),
        CheckConstraint("n_ctx > 0", name="n_ctx"),
        CheckConstraint("parallel >= 1", name="parallel"),
        CheckConstraint("traffic_weight >= 0", name="traffic_weight"),
        CheckConstraint("state IN ('active', 'stopped', 'failed')", name="state"),
        CheckConstraint("generation >= 1", name="generation"),
        CheckConstraint("failures >= 0", name="failures"),
    )


class WorkerProcess(Base):
    """A worker process a supervisor started, so that a restarted supervisor adopts it."""

    __tablename__ = "worker_processes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(Text)
    # No foreign key: the record outlives a deleted deployment until its process is stopped.
    deployment_id: Mapped[int] = mapped_column(BigInteger, index=True)
    generation: Mapped[int] = mapped_column(Integer)
    pid: Mapped[int] = mapped_column(Integer)
    log_path: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = _now()
    stop_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("uq_worker_processes_node_pid", "node", "pid", unique=True),)


class Worker(Base):
    """A running (or recently running) worker process, as it reports itself."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL"), index=True
    )
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    host: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()
    slots_total: Mapped[int | None] = mapped_column(Integer)
    slots_busy: Mapped[int | None] = mapped_column(Integer)
    queue_length: Mapped[int | None] = mapped_column(Integer)
    tokens_per_second: Mapped[float | None] = mapped_column(Double)
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    vram_bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    # What llama.cpp reported at load: can this build offload, and how many layers it did.
    gpu_offload_supported: Mapped[bool | None] = mapped_column(Boolean)
    n_gpu_layers_offloaded: Mapped[int | None] = mapped_column(Integer)
    # The model name clients ask for (OpenAI "model"); the gateway routes on it.
    alias: Mapped[str | None] = mapped_column(Text)
    # Where the worker's output goes, when whoever started it said so.
    log_path: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(
            "state IN ('loading', 'ready', 'failed', 'stopping', 'stopped')", name="state"
        ),
    )


class Request(Base):
    """One call through Herd: who, what was served, how fast, how it ended."""

    __tablename__ = "requests"

    # Generated by the gateway before the row is written, so the response can carry it.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    created_at: Mapped[datetime] = _now()
    alias: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    deployment_id: Mapped[int | None] = mapped_column(BigInteger)
    # No foreign key: worker rows come and go; the request log outlives them.
    worker_id: Mapped[int | None] = mapped_column(BigInteger)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    session_id: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(Text, server_default=text("'chat.completions'"))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    queue_ms: Mapped[float | None] = mapped_column(Double)
    ttft_ms: Mapped[float | None] = mapped_column(Double)
    total_ms: Mapped[float | None] = mapped_column(Double)
    tokens_per_second: Mapped[float | None] = mapped_column(Double)
    status: Mapped[str] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(SmallInteger)
    error: Mapped[str | None] = mapped_column(Text)
    cache_hit: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    __table_args__ = (
        # Time-range queries: everything, per model, per alias.
        Index("ix_requests_created_at", "created_at"),
        Index("ix_requests_model_id_created_at", "model_id", "created_at"),
        Index("ix_requests_alias_created_at", "alias", "created_at"),
        Index("ix_requests_session_id", "session_id"),
    )


class Message(Base):
    """Prompt and response text of a request, apart so it can be expired or redacted."""

    __tablename__ = "messages"

    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True
    )
    prompt: Mapped[Any] = mapped_column(JSONB)
    response: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (Index("ix_messages_created_at", "created_at"),)


class Feedback(Base):
    """An end user's rating of one response; one per response and user."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    rating: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str | None] = mapped_column(Text)
    # '' for anonymous votes, so the unique key below also holds for them.
    user_id: Mapped[str] = mapped_column(Text, server_default=text("''"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("rating IN (-1, 1)", name="rating"),
        Index("uq_feedback_request_id_user_id", "request_id", "user_id", unique=True),
        Index("ix_feedback_created_at", "created_at"),
    )


class Operator(Base):
    """A dashboard account."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = _now()
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint("role IN ('admin', 'operator', 'viewer')", name="role"),)


class ApiKey(Base):
    """A gateway API key; only its hash is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    # The first characters of the key, so operators can tell keys apart.
    prefix: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
