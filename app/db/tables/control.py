"""The control plane's tables: deployments, aliases, keys, operators, audit."""

from __future__ import annotations

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
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.tables.base import Base, now_column


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
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
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
    # Prompt-lookup draft tokens per request and step; 0: off (revision 0023).
    lookup_drafts: Mapped[int] = mapped_column(Integer, server_default=text("8"))

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
        CheckConstraint("lookup_drafts BETWEEN 0 AND 64", name="lookup_drafts"),
    )


class Operator(Base):
    """A dashboard account."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = now_column()
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint("role IN ('admin', 'operator', 'viewer')", name="role"),)


class LoginAttempt(Base):
    """Failed dashboard logins in a row for one operator name, and its lockout."""

    __tablename__ = "login_attempts"

    operator_name: Mapped[str] = mapped_column(Text, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime] = now_column()


class ApiKey(Base):
    """A gateway API key; only its hash is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    # The first characters of the key, so operators can tell keys apart.
    prefix: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()
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


class AuditLog(Base):
    """One change to Herd's configuration: who, how, from where, and before/after as JSON."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = now_column()
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
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
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
