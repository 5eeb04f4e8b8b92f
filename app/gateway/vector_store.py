"""The semantic cache's SQL: pgvector's extension, one HNSW index per vector size, nearest
earlier question, new entries.

Vectors are stored as real[] (table `semantic_cache`, revision 0011) and compared as
pgvector's `vector(N)`: an expression index `(embedding::vector(N))` per size N, partial on
`dims = N`, so one table serves embedding models of any size, and the schema needs no
extension to exist. Vectors travel as text literals ('[0.1,...]'), so no client library is
needed.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from app.db.pgvector import ensure_pgvector

logger = logging.getLogger(__name__)

# Candidates the HNSW search keeps (pgvector's default is 40); more finds more of the true
# nearest questions, at more reads.
EF_SEARCH = 64


def vector_literal(vector: Sequence[float]) -> str:
    """'[x,y,...]': pgvector's text form, exact for float32 with 9 significant digits."""
    return "[" + ",".join(f"{float(x):.9g}" for x in vector) + "]"


@dataclass(frozen=True)
class CachedEntry:
    """The nearest earlier answer and how similar its question is (cosine, -1..1)."""

    id: int
    similarity: float
    answer: str
    finish_reason: str
    usage: dict[str, Any]
    model: str


class VectorStore:
    """Reads and writes `semantic_cache`; its methods block (run them in a thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._indexed: set[int] = set()
        self._iterative_scan: bool | None = None

    def status(self) -> str | None:
        """None when pgvector is usable, else the reason the semantic cache is off."""
        try:
            with self.engine.begin() as conn:
                problem = ensure_pgvector(conn)
                if problem is None:
                    version = conn.execute(
                        text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                    ).scalar_one()
                    # Filtered HNSW scans keep looking past filtered-out rows from 0.8 on.
                    major, minor = (int(p) for p in str(version).split(".")[:2])
                    self._iterative_scan = (major, minor) >= (0, 8)
                return problem
        except SQLAlchemyError as exc:
            return f"the database is unreachable: {exc.__class__.__name__}"

    def ensure_index(self, dims: int) -> None:
        """The HNSW index for vectors of this size (once per process; idempotent)."""
        if dims in self._indexed:
            return
        sql = (
            f"CREATE INDEX IF NOT EXISTS ix_semantic_cache_hnsw_{dims} ON semantic_cache "
            f"USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}"
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(text(sql))
        except DBAPIError as exc:
            # Another gateway replica created it at the same moment.
            if "already exists" not in str(exc) and "duplicate key" not in str(exc):
                raise
        self._indexed.add(dims)

    def nearest(self, alias: str, scope: str, vector: Sequence[float]) -> CachedEntry | None:
        """The cached answer whose question is nearest to vector, in alias and scope."""
        dims = len(vector)
        # dims is an int spliced into the SQL so the planner can match the partial index.
        sql = text(
            f"""
            SELECT id, answer, finish_reason, usage, model,
                   1 - ((embedding::vector({dims})) <=> CAST(:q AS vector({dims})))
                       AS similarity
            FROM semantic_cache
            WHERE dims = {dims} AND alias = :alias AND scope = :scope
            ORDER BY (embedding::vector({dims})) <=> CAST(:q AS vector({dims}))
            LIMIT 1
            """
        )
        with self.engine.begin() as conn:
            conn.execute(text(f"SET LOCAL hnsw.ef_search = {EF_SEARCH}"))
            if self._iterative_scan:
                conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
            row = (
                conn.execute(sql, {"q": vector_literal(vector), "alias": alias, "scope": scope})
                .mappings()
                .first()
            )
        if row is None:
            return None
        return CachedEntry(
            id=int(row["id"]),
            similarity=float(row["similarity"]),
            answer=str(row["answer"]),
            finish_reason=str(row["finish_reason"]),
            usage=dict(row["usage"] or {}),
            model=str(row["model"]),
        )

    def add(
        self,
        *,
        alias: str,
        scope: str,
        vector: Sequence[float],
        question: str,
        answer: str,
        finish_reason: str,
        usage: dict[str, Any],
        model: str,
        request_id: uuid.UUID | None,
    ) -> None:
        """Store an answer under its question's vector."""
        self.ensure_index(len(vector))
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO semantic_cache (alias, scope, dims, embedding, question, "
                    "answer, finish_reason, usage, model, request_id) VALUES (:alias, :scope, "
                    ":dims, CAST(:embedding AS real[]), :question, :answer, :finish_reason, "
                    "CAST(:usage AS jsonb), :model, :request_id)"
                ),
                {
                    "alias": alias,
                    "scope": scope,
                    "dims": len(vector),
                    "embedding": "{" + vector_literal(vector)[1:-1] + "}",
                    "question": question.replace("\x00", "\ufffd"),
                    "answer": answer.replace("\x00", "\ufffd"),
                    "finish_reason": finish_reason,
                    "usage": json.dumps(usage),
                    "model": model,
                    "request_id": request_id,
                },
            )
