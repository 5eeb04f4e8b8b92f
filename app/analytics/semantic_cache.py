"""The semantic cache in Monitoring: how often it answers, and whether people like its
answers as much as fresh ones (so an operator sees when the threshold hurts quality)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from app.analytics.queries import fetch_rows, ratio
from app.analytics.scope import Scope
from app.analytics.stats import wilson_interval

# Chat calls of the scope, split into semantic-cache hits (cache_similarity set) and fresh
# answers (no cache hit of either kind); votes joined per request. Raw rows: the cache is
# per alias and recent, and ix_requests_alias_created_at bounds the scan.
SEMANTIC_SQL = text(
    """
    SELECT r.alias,
           count(DISTINCT r.id) AS requests,
           count(DISTINCT r.id) FILTER (WHERE r.cache_similarity IS NOT NULL) AS semantic_hits,
           avg(r.cache_similarity) FILTER (WHERE r.cache_similarity IS NOT NULL)
               AS mean_similarity,
           count(f.id) FILTER (WHERE r.cache_similarity IS NOT NULL) AS cached_votes,
           count(f.id) FILTER (WHERE r.cache_similarity IS NOT NULL AND f.rating > 0)
               AS cached_up,
           count(f.id) FILTER (WHERE NOT r.cache_hit) AS fresh_votes,
           count(f.id) FILTER (WHERE NOT r.cache_hit AND f.rating > 0) AS fresh_up
    FROM requests r
    LEFT JOIN feedback f ON f.request_id = r.id
    WHERE r.created_at >= :start AND r.created_at < :end
      AND r.endpoint = 'chat.completions' AND r.status = 'ok'
      AND r.alias IN (SELECT alias FROM aliases WHERE semantic_cache_alias IS NOT NULL)
      AND (CAST(:alias AS text) IS NULL OR r.alias = :alias)
      AND (CAST(:model_id AS bigint) IS NULL OR r.model_id = :model_id)
    GROUP BY r.alias
    ORDER BY r.alias
    """
)


def _rate(up: int, votes: int) -> dict[str, Any]:
    low, high = wilson_interval(up, votes)
    return {
        "rate": ratio(up, votes),
        "low": low if votes else None,
        "high": high if votes else None,
    }


def semantic_cache_rows(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
    """Per alias with the semantic cache on: calls, hit rate, mean similarity of hits, and
    the thumbs-up rate (with its 95% Wilson interval) of cached and of fresh answers."""
    params = {k: v for k, v in scope.params().items() if k != "worker_id"}
    rows = []
    for r in fetch_rows(engine, SEMANTIC_SQL, params):
        cached = _rate(int(r["cached_up"]), int(r["cached_votes"]))
        fresh = _rate(int(r["fresh_up"]), int(r["fresh_votes"]))
        rows.append(
            {
                "alias": r["alias"],
                "chat calls": int(r["requests"]),
                "semantic hits": int(r["semantic_hits"]),
                "hit rate": ratio(r["semantic_hits"], r["requests"]),
                "mean similarity of hits": r["mean_similarity"],
                "thumbs-up cached": cached["rate"],
                "cached 95% interval": _interval(cached),
                "votes cached": int(r["cached_votes"]),
                "thumbs-up fresh": fresh["rate"],
                "fresh 95% interval": _interval(fresh),
                "votes fresh": int(r["fresh_votes"]),
            }
        )
    return rows


def _interval(rate: dict[str, Any]) -> str:
    if rate["low"] is None:
        return "-"
    return f"{rate['low']:.0%} - {rate['high']:.0%}"
