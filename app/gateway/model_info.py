"""GET /v1/models/{id}: what an alias serves, from the deployments and models tables.

Read per call (not from the routing snapshot): the page is for people and tools that look
a model up once, and it carries more than routing needs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from app.gateway.routing import AliasRoute
from app.openai_api.text import bad_text_at

MODEL_SQL = text(
    """
    SELECT d.id AS deployment_id, d.embeddings, d.pooling, d.n_ctx, d.traffic_weight,
           d.state, extract(epoch FROM d.created_at)::bigint AS created,
           m.name, m.architecture, m.quantization, m.file_type, m.parameter_count,
           m.context_length, m.embedding_length, m.has_chat_template, m.chat_template_tools
    FROM deployments d JOIN models m ON m.id = d.model_id
    WHERE d.alias = :alias AND d.state <> 'stopped'
    ORDER BY d.traffic_weight DESC, d.id
    """
)


def _version(row: Any, live_workers: int) -> dict[str, Any]:
    embeddings = bool(row["embeddings"])
    return {
        "model": row["name"],
        "architecture": row["architecture"],
        "quantization": row["quantization"],
        "file_type": row["file_type"],
        "parameters": row["parameter_count"],
        # The context the model was trained for, and what each request may use here.
        "context_length_trained": row["context_length"],
        "context_length": min(row["n_ctx"], row["context_length"] or row["n_ctx"]),
        "embedding_length": row["embedding_length"],
        "traffic_weight": row["traffic_weight"],
        "state": row["state"],
        "live_workers": live_workers,
        "capabilities": {
            "chat": not embeddings and bool(row["has_chat_template"]),
            "completions": not embeddings,
            "embeddings": embeddings,
            "tools": not embeddings and bool(row["chat_template_tools"]),
        },
        "pooling": row["pooling"] if embeddings else None,
    }


def describe_alias(engine: Engine, alias: str, route: AliasRoute | None) -> dict[str, Any] | None:
    """The model object for alias, or None when nothing serves or is deployed under it.

    Top-level fields come from the version with the largest traffic weight; `versions`
    lists every deployment of the alias (canaries, A/B arms)."""
    if bad_text_at(alias) is not None:
        return None  # no alias holds a NUL or a lone surrogate (PostgreSQL would refuse it)
    with engine.connect() as conn:
        rows = conn.execute(MODEL_SQL, {"alias": alias}).mappings().all()
    live = {d.id: len(d.workers) for d in route.deployments} if route is not None else {}
    versions = [_version(r, live.get(r["deployment_id"], 0)) for r in rows]
    if not versions:
        if route is None or not route.deployments:
            return None
        # Only external workers (registered without a deployment): little is known.
        versions = [
            {"model": d.model_name, "live_workers": len(d.workers), "capabilities": None}
            for d in route.deployments
        ]
    primary = versions[0]
    return {
        "id": alias,
        "object": "model",
        "created": int(rows[0]["created"]) if rows else 0,
        "owned_by": "herd",
        **{k: v for k, v in primary.items() if k not in ("traffic_weight", "state")},
        "versions": versions,
    }
