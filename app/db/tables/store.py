"""The GGUF model store's table (owner: app/store/catalog.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.tables.base import Base, now_column


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
    scanned_at: Mapped[datetime] = now_column()
    created_at: Mapped[datetime] = now_column()
    # Lineage of a model made inside Herd (quantized, pruned): its source, how, and by whom.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_by: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (CheckConstraint("status IN ('valid', 'invalid', 'missing')", name="status"),)
