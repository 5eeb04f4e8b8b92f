"""pgvector's extension: created where it can be, and why not where it cannot (the semantic
cache needs it; the schema itself does not)."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

NO_PGVECTOR = (
    "this PostgreSQL server has no pgvector extension (install it, e.g. Debian's "
    "postgresql-NN-pgvector package, or use Herd's embedded server, which ships it)"
)


def ensure_pgvector(conn: Connection) -> str | None:
    """Create pgvector's extension if missing; None when it is there, else why not."""
    try:
        with conn.begin_nested():
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as exc:
        reason = str(getattr(exc.orig, "args", [exc])[0] or exc).strip().splitlines()[0]
        available = conn.execute(
            text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
        ).scalar_one()
        if not available:
            return NO_PGVECTOR
        return f"pgvector is installed on the server but cannot be created here: {reason}"
    return None


def pgvector_problem(engine: Engine) -> str | None:
    """Read-only: None when pgvector is created or can be, else why the semantic cache
    cannot work on this server (for pages)."""
    with engine.connect() as conn:
        installed = conn.execute(
            text("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
        ).scalar_one()
        if installed:
            return None
        available = conn.execute(
            text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
        ).scalar_one()
    return None if available else NO_PGVECTOR
