"""Session counts of a scope, read from the hourly sessions rollup (revision 0008).

Whole hours come from `sessions_hourly`; the partial hours at either end of the range from
`request_sessions` itself, so the counts are those of the exact range. Sessions still going
(a turn within :idle) are subtracted from `ended` and `one_turn`: they are not over yet.
"""

from __future__ import annotations

from app.analytics.scope import END_HOUR as _END_HOUR
from app.analytics.scope import FIRST_HOUR as _FIRST_HOUR

_FILTERS = """
        AND (CAST(:alias AS text) IS NULL OR alias = :alias)
        AND (CAST(:model_id AS bigint) IS NULL OR model_id = :model_id)
"""

# Rows of (hour, alias, model_id, sessions, turns, regenerates, ended, one_turn), several per
# key: callers group them. '' and 0 stand for a NULL alias and model, as in the rollups.
SESSION_COUNTS = f"""
      SELECT hour, alias, model_id, sessions, turns, regenerates, sessions AS ended,
             one_turn
      FROM sessions_hourly
      WHERE hour >= {_FIRST_HOUR} AND hour < {_END_HOUR} {_FILTERS}
      UNION ALL
      SELECT date_trunc('hour', first_at, 'UTC'), coalesce(alias, ''), coalesce(model_id, 0),
             count(*), sum(turns), sum(regenerates), count(*),
             count(*) FILTER (WHERE turns = 1)
      FROM request_sessions
      WHERE first_at >= :start AND first_at < :end
        AND (first_at < {_FIRST_HOUR} OR first_at >= {_END_HOUR}) {_FILTERS}
      GROUP BY 1, 2, 3
      UNION ALL
      SELECT date_trunc('hour', first_at, 'UTC'), coalesce(alias, ''), coalesce(model_id, 0),
             0, 0, 0, -count(*), -count(*) FILTER (WHERE turns = 1)
      FROM request_sessions
      WHERE last_at >= now() - CAST(:idle AS interval)
        AND first_at >= :start AND first_at < :end {_FILTERS}
      GROUP BY 1, 2, 3
"""
