"""Usage per API key in a period, from api_key_usage (what the gateways count for limits)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from app.analytics.scope import Scope

KEY_USAGE_SQL = text(
    """
    SELECT k.id, k.name, k.revoked_at IS NULL AS active,
           coalesce(sum(u.requests), 0) AS requests, coalesce(sum(u.tokens), 0) AS tokens,
           k.rate_limit_rpm, k.rate_limit_tpm, k.daily_token_quota,
           (SELECT coalesce(sum(t.tokens), 0) FROM api_key_usage t
            WHERE t.api_key_id = k.id AND t.minute >= date_trunc('day', now() AT TIME ZONE 'UTC')
                                                      AT TIME ZONE 'UTC') AS tokens_today
    FROM api_keys k
    LEFT JOIN api_key_usage u
      ON u.api_key_id = k.id AND u.minute >= :start AND u.minute < :end
    GROUP BY k.id
    HAVING k.revoked_at IS NULL OR sum(u.requests) > 0
    ORDER BY tokens DESC, k.name
    """
)


def key_usage(engine: Engine, scope: Scope) -> list[dict[str, Any]]:
    """Requests and tokens per key in the scope's period, with its limits and today's
    tokens against its daily quota (UTC day)."""
    with engine.connect() as conn:
        rows = conn.execute(KEY_USAGE_SQL, {"start": scope.start, "end": scope.end}).mappings()
        return [dict(r) for r in rows]
