"""The fleet's tables: worker processes and rows, nodes, placements, restarts."""

from __future__ import annotations

from datetime import datetime

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
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.tables.base import Base, now_column


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
    started_at: Mapped[datetime] = now_column()
    stop_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("uq_worker_processes_node_pid", "node", "pid", unique=True),)


class Node(Base):
    """A machine with a supervisor: its labels and its last heartbeat."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    started_at: Mapped[datetime] = now_column()
    heartbeat_at: Mapped[datetime] = now_column()


class Placement(Base):
    """Which node runs replica `replica` of a supervised deployment."""

    __tablename__ = "placements"

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    replica: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(Text, index=True)
    placed_at: Mapped[datetime] = now_column()

    __table_args__ = (CheckConstraint("replica >= 0", name="replica"),)


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
    started_at: Mapped[datetime] = now_column()
    heartbeat_at: Mapped[datetime] = now_column()
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
    updated_at: Mapped[datetime] = now_column()

    __table_args__ = (CheckConstraint("restarts >= 0", name="restarts"),)
