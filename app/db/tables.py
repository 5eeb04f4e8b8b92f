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
    Computed,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL
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
    # The chat template renders tools (revision 0011).
    chat_template_tools: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    status: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # What the memory estimate needs (bytes per layer, KV shape) so it runs without the file.
    layout: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    scanned_at: Mapped[datetime] = _now()
    created_at: Mapped[datetime] = _now()
    # Lineage of a model made inside Herd (quantized, pruned): its source, how, and by whom.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_by: Mapped[str | None] = mapped_column(Text)

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
    # The node whose supervisor runs its replicas; NULL: any node that matches node_labels.
    node: Mapped[str | None] = mapped_column(Text)
    # Labels a node must carry to run it ({"gpu": "h100"}); NULL: no requirement.
    node_labels: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    # Replicas started by someone else (Kubernetes, `herd worker --join`); no supervisor runs it.
    external: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Workers serve POST /v1/embeddings (only), pooling by `pooling` (revision 0011).
    embeddings: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    pooling: Mapped[str] = mapped_column(Text, server_default=text("'model'"))

    __table_args__ = (
        CheckConstraint("replicas >= 0", name="replicas"),
        CheckConstraint("n_gpu_layers >= -1", name="n_gpu_layers"),
        # 0: the worker chooses (app/engine/serving.py).
        CheckConstraint("n_ctx >= 0", name="n_ctx"),
        CheckConstraint("parallel >= 0", name="parallel"),
        CheckConstraint("traffic_weight >= 0", name="traffic_weight"),
        CheckConstraint("state IN ('active', 'stopped', 'failed')", name="state"),
        CheckConstraint("generation >= 1", name="generation"),
        CheckConstraint("failures >= 0", name="failures"),
        CheckConstraint("pooling IN ('model', 'mean', 'cls', 'last')", name="pooling"),
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


class Node(Base):
    """A machine with a supervisor: its labels and its last heartbeat."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()


class Placement(Base):
    """Which node runs replica `replica` of a supervised deployment."""

    __tablename__ = "placements"

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    replica: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(Text, index=True)
    placed_at: Mapped[datetime] = _now()

    __table_args__ = (CheckConstraint("replica >= 0", name="replica"),)


class GatewayDemand(Base):
    """One gateway's count of calls waiting and in flight for an alias (for autoscalers)."""

    __tablename__ = "gateway_demand"

    gateway: Mapped[str] = mapped_column(Text, primary_key=True)
    alias: Mapped[str] = mapped_column(Text, primary_key=True, index=True)
    waiting: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    in_flight: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = _now()


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
    # A semantic-cache hit: the cosine similarity of the cached question (revision 0011).
    cache_similarity: Mapped[float | None] = mapped_column(REAL)
    # Written by `herd demo-traffic`, so that it can be told apart and deleted.
    synthetic: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # A line of a batch (revision 0016): set only for calls the batch runner sent with its
    # own credential; engagement metrics leave these rows out.
    batch_id: Mapped[str | None] = mapped_column(Text)
    # The batch line's number (revision 0022): with batch_id, the key a runner that resumes
    # the batch finds the line's earlier calls by.
    batch_line: Mapped[int | None] = mapped_column(Integer)
    # live | batch | synthetic (revision 0019), derived from the two columns above so that
    # no writer can set it apart from them; app/analytics/traffic.py names the values.
    traffic_class: Mapped[str] = mapped_column(
        Text,
        Computed(
            "CASE WHEN batch_id IS NOT NULL THEN 'batch' WHEN synthetic THEN 'synthetic' "
            "ELSE 'live' END",
            persisted=True,
        ),
    )
    # Why the answer stopped: stop | length (cut at max_tokens) | tool_calls ...; NULL when
    # unknown (an error, a call logged before revision 0019).
    finish_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # Time-range queries: everything, per model, per alias.
        Index("ix_requests_created_at", "created_at"),
        Index("ix_requests_model_id_created_at", "model_id", "created_at"),
        Index("ix_requests_alias_created_at", "alias", "created_at"),
        Index("ix_requests_session_id", "session_id"),
        Index("ix_requests_batch_id", "batch_id", postgresql_where=text("batch_id IS NOT NULL")),
        # Ranges of the classes other than live, which are few (0019).
        Index(
            "ix_requests_traffic_class_created_at",
            "traffic_class",
            "created_at",
            postgresql_where=text("traffic_class <> 'live'"),
        ),
        # 4xx answers are few: tiles count them over any range through this (0013).
        Index(
            "ix_requests_client_errors",
            "created_at",
            postgresql_where=text("http_status BETWEEN 400 AND 499"),
        ),
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


class LoginAttempt(Base):
    """Failed dashboard logins in a row for one operator name, and its lockout."""

    __tablename__ = "login_attempts"

    operator_name: Mapped[str] = mapped_column(Text, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime] = _now()


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
    # What the key may do (revision 0009): the aliases it may call (NULL: every alias), the
    # admin API, until when, and its limits (NULL: none).
    scopes: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    admin: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer)
    rate_limit_tpm: Mapped[int | None] = mapped_column(Integer)
    daily_token_quota: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(
            "rate_limit_rpm >= 1 AND rate_limit_tpm >= 1 AND daily_token_quota >= 1",
            name="limits",
        ),
    )


class ApiKeyUsage(Base):
    """Requests and tokens of one API key in one minute, summed over gateway replicas."""

    __tablename__ = "api_key_usage"

    api_key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class AuditLog(Base):
    """One change to Herd's configuration: who, how, from where, and before/after as JSON."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = _now()
    # The operator account, or "key:<name>" for the admin API.
    actor: Mapped[str] = mapped_column(Text)
    via: Mapped[str] = mapped_column(Text)
    # The page ("models"), command ("herd deploy") or API route ("POST /v1/batches") the
    # change came from (0020; NULL on older rows that did not say).
    origin: Mapped[str | None] = mapped_column(Text)
    # Where the change came from: the client's address (page, API) or host name (CLI, apply).
    source: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    target_kind: Mapped[str] = mapped_column(Text)
    target_id: Mapped[str | None] = mapped_column(Text)
    before: Mapped[Any] = mapped_column(JSONB, nullable=True)
    after: Mapped[Any] = mapped_column(JSONB, nullable=True)

    __table_args__ = (
        CheckConstraint("via IN ('page', 'cli', 'api', 'apply', 'system')", name="via"),
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_actor_at", "actor", "at"),
        Index("ix_audit_log_action_at", "action", "at"),
    )


class Alias(Base):
    """The gateway's settings for one alias; an alias without a row gets the defaults."""

    __tablename__ = "aliases"

    alias: Mapped[str] = mapped_column(Text, primary_key=True)
    cache_enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    cache_ttl_s: Mapped[float] = mapped_column(Double, server_default=text("300"))
    # False: requests are logged without their prompt and response text.
    log_text: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # Requests per minute per gateway replica; NULL: no limit.
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    # The embedding alias that embeds this alias's questions for the semantic cache;
    # NULL: no semantic cache (revision 0011).
    semantic_cache_alias: Mapped[str | None] = mapped_column(Text)
    # Cosine similarity above which a cached answer is reused.
    semantic_cache_threshold: Mapped[float] = mapped_column(Double, server_default=text("0.95"))

    __table_args__ = (
        CheckConstraint("cache_ttl_s > 0", name="cache_ttl_s"),
        CheckConstraint("rate_limit_rpm >= 1", name="rate_limit_rpm"),
        CheckConstraint(
            "semantic_cache_threshold > 0 AND semantic_cache_threshold <= 1",
            name="semantic_cache_threshold",
        ),
    )


class SemanticCacheEntry(Base):
    """An answer with the embedding of the question it answered (revision 0011).

    The vector is real[]: the gateway adds pgvector's HNSW index per vector size when the
    extension is there (app/gateway/semantic_cache.py)."""

    __tablename__ = "semantic_cache"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(Text)
    # Hash of what must match besides the question: system prompt, sampling, endpoint.
    scope: Mapped[str] = mapped_column(Text)
    dims: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[list[float]] = mapped_column(ARRAY(REAL))
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str] = mapped_column(Text)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    model: Mapped[str] = mapped_column(Text)
    request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("dims > 0", name="dims"),
        Index("ix_semantic_cache_alias_scope", "alias", "scope"),
    )


# -- analytics (revision 0005) --------------------------------------------------------------


class RetrainingDecision(Base):
    """What an operator decided about a model version, and the evidence they saw."""

    __tablename__ = "retraining_decisions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    alias: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str] = mapped_column(Text)
    # What Herd recommended when the decision was made, to audit where operators disagreed.
    recommendation: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, server_default=text("''"))
    decided_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    # The period whose data the decision was based on.
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    signals: Mapped[Any] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))

    __table_args__ = (
        CheckConstraint("decision IN ('retrain', 'rollback', 'keep')", name="decision"),
        CheckConstraint("period_end > period_start", name="period"),
        Index("ix_retraining_decisions_model_id_created_at", "model_id", "created_at"),
    )


class FeedbackTag(Base):
    """An operator's label on a rated conversation (e.g. 'hallucination')."""

    __tablename__ = "feedback_tags"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("length(tag) BETWEEN 1 AND 64", name="tag"),
        Index("uq_feedback_tags_request_id_tag", "request_id", "tag", unique=True),
        Index("ix_feedback_tags_tag", "tag"),
    )


class FeedbackCorrection(Base):
    """An operator's corrected answer to a response; the 'chosen' side of a preference pair."""

    __tablename__ = "feedback_corrections"

    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True
    )
    response: Mapped[str] = mapped_column(Text)
    corrected_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


def _counter() -> Any:
    return mapped_column(BigInteger, server_default=text("0"))


def _sum() -> Any:
    return mapped_column(Double, server_default=text("0"))


def _traffic_class() -> Any:
    # Part of the rollups' key since revision 0019: a class filter is exact at any range.
    return mapped_column(Text, primary_key=True, server_default=text("'live'"))


class RequestsHourly(Base):
    """Rollup: counts and sums per hour, alias, model, worker and traffic class; kept by
    triggers on write.

    NULL dimensions are stored as '' / 0 so they can be part of the key.
    """

    __tablename__ = "requests_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    alias: Mapped[str] = mapped_column(Text, primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    worker_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    traffic_class: Mapped[str] = _traffic_class()
    requests: Mapped[int] = _counter()
    errors: Mapped[int] = _counter()
    client_errors: Mapped[int] = _counter()
    cache_hits: Mapped[int] = _counter()
    prompt_tokens: Mapped[int] = _counter()
    completion_tokens: Mapped[int] = _counter()
    ttft_n: Mapped[int] = _counter()
    ttft_sum_ms: Mapped[float] = _sum()
    total_n: Mapped[int] = _counter()
    total_sum_ms: Mapped[float] = _sum()
    queue_n: Mapped[int] = _counter()
    queue_sum_ms: Mapped[float] = _sum()
    tps_n: Mapped[int] = _counter()
    tps_sum: Mapped[float] = _sum()
    # Feedback counts sit on the hour of the rated request.
    ratings: Mapped[int] = _counter()
    thumbs_up: Mapped[int] = _counter()
    comments: Mapped[int] = _counter()


class LatencyHourly(Base):
    """Rollup: a mergeable latency histogram (8 log bins per octave of ms) per hour."""

    __tablename__ = "latency_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    alias: Mapped[str] = mapped_column(Text, primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    worker_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    traffic_class: Mapped[str] = _traffic_class()
    metric: Mapped[str] = mapped_column(Text, primary_key=True)
    bin: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("metric IN ('ttft', 'total', 'queue')", name="metric"),)


class RequestSession(Base):
    """Rollup: one chat session (requests sharing a session_id): when, which model, turns."""

    __tablename__ = "request_sessions"

    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    # Alias and model of the first turn.
    alias: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[int | None] = mapped_column(BigInteger)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    turns: Mapped[int] = mapped_column(Integer)
    # Turns that resent the previous turn's prompt (same prompt tokens): "regenerate".
    regenerates: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    first_prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    # Lets the next insert recognise a regenerate (same prompt length as the turn before).
    last_prompt_tokens: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_request_sessions_first_at", "first_at"),
        # Sessions still going (not over yet) are the few with a recent last turn.
        Index("ix_request_sessions_last_at", "last_at"),
    )


class SessionsHourly(Base):
    """Rollup of request_sessions per hour of the session's start, alias and model; kept by
    triggers on request_sessions ('' / 0 for NULL dimensions)."""

    __tablename__ = "sessions_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    alias: Mapped[str] = mapped_column(Text, primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sessions: Mapped[int] = _counter()
    turns: Mapped[int] = _counter()
    regenerates: Mapped[int] = _counter()
    # Sessions of a single turn so far.
    one_turn: Mapped[int] = _counter()


class FeedbackReview(Base):
    """Rollup: one row per rated request (its votes summed, latest comment, the request's
    alias, model and time), recomputed by triggers on feedback for the Feedback review list."""

    __tablename__ = "feedback_reviews"

    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True
    )
    request_created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    alias: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[int | None] = mapped_column(BigInteger)
    net: Mapped[int] = mapped_column(Integer)
    votes: Mapped[int] = mapped_column(Integer)
    # Thumbs-down votes with a comment: what the retraining signals' complaint terms read.
    down_comments: Mapped[int] = mapped_column(Integer)
    first_voted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_voted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The latest updated_at of its votes: the list's order.
    rated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    comment: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_feedback_reviews_rated_at", text("rated_at DESC"), "request_id"),
        Index(
            "ix_feedback_reviews_down_comments",
            "model_id",
            "last_voted_at",
            postgresql_where=text("down_comments > 0"),
        ),
        Index(
            "ix_feedback_reviews_multi_vote",
            "first_voted_at",
            "last_voted_at",
            postgresql_where=text("votes > 1"),
        ),
    )


class Job(Base):
    """Long work run in its own process (quantize, evaluate, ...): state, progress, heartbeat.

    Written only by app.jobs.store.JobStore.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    progress: Mapped[float] = mapped_column(Double, server_default=text("0"))
    log_tail: Mapped[str] = mapped_column(Text, server_default=text("''"))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    started_by: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Temporary files the job writes: removed by whoever finds the job dead.
    scratch: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))

    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="state"
        ),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        Index("ix_jobs_kind_created_at", "kind", "created_at"),
        Index("ix_jobs_state", "state"),
    )


class Evaluation(Base):
    """One measured metric of one model (perplexity, tokens/s, RSS ...), with its settings."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    metric: Mapped[str] = mapped_column(Text)
    value: Mapped[float] = mapped_column(Double)
    unit: Mapped[str] = mapped_column(Text, server_default=text("''"))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        Index("ix_evaluations_model_id_metric_created_at", "model_id", "metric", "created_at"),
    )


class EvaluationAnswer(Base):
    """The answer one model generated greedily to one prompt of an evaluation's prompt set,
    beside the reference answer, for reading side by side.

    Written only by app.evaluation.answers.
    """

    __tablename__ = "evaluation_answers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # 'feedback' or the prompt file's name; prompt_key (sha256 of the messages and the
    # reference) matches the same prompt across models and runs.
    prompt_set: Mapped[str] = mapped_column(Text)
    prompt_key: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    prompt: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    reference: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    answer_tokens: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        Index("ix_evaluation_answers_prompt_set_created_at", "prompt_set", "created_at"),
        Index("ix_evaluation_answers_model_id_prompt_key", "model_id", "prompt_key"),
    )


class Rollout(Base):
    """A canary, promotion or rollback of an alias: who, when, what changed, the evidence.

    Written only by app.rollouts.actions.Rollouts.
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    # No foreign key: the record outlives a deleted deployment.
    candidate_deployment_id: Mapped[int | None] = mapped_column(BigInteger)
    candidate_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL")
    )
    # [{deployment_id, model_id, model, weight, state}] of the alias before and after.
    before: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    after: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    evaluation: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, server_default=text("'[]'::jsonb")
    )
    signals: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    decision_id: Mapped[int | None] = mapped_column(
        ForeignKey("retraining_decisions.id", ondelete="SET NULL")
    )
    decided_by: Mapped[str] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, server_default=text("''"))
    grace_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When a later action superseded this one (a canary promoted or rolled back, a
    # promotion rolled back or its grace period over).
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint(
            "action IN ('canary', 'promote', 'rollback', 'auto_rollback')", name="action"
        ),
        Index("ix_rollouts_alias_created_at", "alias", "created_at"),
    )


class Dataset(Base):
    """A training dataset built in Herd: where its files are, how it was made (revision 0017).

    Written only by app.datasets.store.DatasetStore.
    """

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    source: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    split_rows: Mapped[dict[str, int]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    rows: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    card: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))

    __table_args__ = (
        CheckConstraint("kind IN ('sft', 'distill', 'augment')", name="kind"),
        CheckConstraint("rows >= 0", name="rows"),
        Index("ix_datasets_created_at", "created_at"),
    )


class File(Base):
    """An uploaded file (purpose `batch`: JSONL of requests), or a batch's output or error
    file. Input bytes live under HERD_HOME/files; output and error files are written from
    `batch_requests` when read. Written only by app.batches.files."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    purpose: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    # The batch whose output (or errors) this file is; None for an upload.
    batch_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("purpose IN ('batch', 'batch_output', 'batch_errors')", name="purpose"),
        Index("ix_files_created_at", "created_at"),
    )


class Batch(Base):
    """One batch of requests run by the batch runner (a `batch` job). Request counts are
    counted from `batch_requests`, never kept twice. Written only by app.batches.store."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    endpoint: Mapped[str] = mapped_column(Text)
    input_file_id: Mapped[str] = mapped_column(Text)
    completion_window: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'validating'"))
    output_file_id: Mapped[str | None] = mapped_column(Text)
    error_file_id: Mapped[str | None] = mapped_column(Text)
    # Batch-level errors in OpenAI's form ({"object": "list", "data": [...]}).
    errors: Mapped[Any] = mapped_column(JSONB, nullable=True)
    metadata_: Mapped[Any] = mapped_column("metadata", JSONB, nullable=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(Text)
    # The gateway the runner sends lines through, and the runner's credential there: only a
    # caller holding it may mark calls as this batch's (never shown by the API or pages).
    gateway_url: Mapped[str] = mapped_column(Text)
    runner_token: Mapped[str] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    runner_starts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(
            "status IN ('validating', 'in_progress', 'finalizing', 'completed', 'failed', "
            "'cancelling', 'cancelled', 'expired')",
            name="status",
        ),
        Index("ix_batches_status", "status"),
        Index("ix_batches_created_at", "created_at"),
    )


class BatchRequest(Base):
    """One line of a batch: its request, and once done its answer or error, committed with
    its state in one statement. Written only by app.batches.store."""

    __tablename__ = "batch_requests"

    batch_id: Mapped[str] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[Any] = mapped_column(JSONB)
    # pending -> succeeded | failed | cancelled | expired
    state: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    request_id: Mapped[str | None] = mapped_column(Text)
    response: Mapped[Any] = mapped_column(JSONB, nullable=True)
    error: Mapped[Any] = mapped_column(JSONB, nullable=True)
    # Calls of the line that reached the fleet, a call whose answer was lost with its runner
    # included (revision 0022): above 1 when the line was sent again.
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Set by the runner just before it sends the line, cleared once that call's outcome is
    # known (revision 0022): a pending line with it set was sent by a runner that died, or
    # lost its connection, before the answer came.
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'succeeded', 'failed', 'cancelled', 'expired')", name="state"
        ),
        UniqueConstraint("batch_id", "custom_id", name="uq_batch_requests_custom_id"),
        Index("ix_batch_requests_batch_id_state", "batch_id", "state"),
    )


class ProcessRestart(Base):
    """How often `herd up` on a host started one of its processes again after it exited, and
    that process's last exit. Written only by app.db.process_restarts."""

    __tablename__ = "process_restarts"

    host: Mapped[str] = mapped_column(Text, primary_key=True)
    # gateway, dashboard, supervisor or postgres (the embedded server).
    process: Mapped[str] = mapped_column(Text, primary_key=True)
    restarts: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Negative: killed by that signal (Popen's convention).
    last_exit_code: Mapped[int | None] = mapped_column(Integer)
    last_exit_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set while the process keeps crashing; cleared once it stays up.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    log_path: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (CheckConstraint("restarts >= 0", name="restarts"),)
