"""traffic classes: every request row and every rollup row carries its class; the answer's
finish_reason is logged; client errors are counted in the rollups

- `requests.traffic_class`: 'batch' (a line of a batch), 'synthetic' (demo traffic) or
  'live', a stored generated column, so every writer (gateway, COPY, psql, the demo
  generator) gets it right and nothing can set it apart from the columns it is read from.
- `requests.finish_reason`: why the answer stopped (stop, length, tool_calls ...), NULL when
  unknown; training rows leave out answers cut at max_tokens.
- `requests_hourly` and `latency_hourly` gain `traffic_class` as part of their key, so a
  class filter is exact at every range, latency histograms included (before, the
  histograms mixed batch lines into every range read from the rollups). `batch_requests`
  (0016) is gone: the batch class holds those counts.
- `requests_hourly.client_errors`: 4xx answers, counted by the trigger like server errors.
- The session rollup has its own trigger and rebuild function, so that a change to the
  hourly rollups never has to restate it again.

Existing rollups are rebuilt from the raw rows for the hours those rows cover. Older hours
(raw rows expired) keep one 'live' row per key with their batch lines split into a 'batch'
row; their latency histograms cannot be split and stay 'live'.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

TRAFFIC_CLASS = (
    "CASE WHEN batch_id IS NOT NULL THEN 'batch' WHEN synthetic THEN 'synthetic' ELSE 'live' END"
)

# The hourly counters and their sources, in one list for the trigger, the rebuild and the
# ON CONFLICT update.
COUNTERS = [
    ("requests", "count(*)"),
    ("errors", "count(*) FILTER (WHERE herd_is_error(r.status, r.http_status))"),
    ("client_errors", "count(*) FILTER (WHERE herd_is_client_error(r.status, r.http_status))"),
    ("cache_hits", "count(*) FILTER (WHERE r.cache_hit)"),
    ("prompt_tokens", "coalesce(sum(r.prompt_tokens), 0)"),
    ("completion_tokens", "coalesce(sum(r.completion_tokens), 0)"),
    ("ttft_n", "count(r.ttft_ms)"),
    ("ttft_sum_ms", "coalesce(sum(r.ttft_ms), 0)"),
    ("total_n", "count(r.total_ms)"),
    ("total_sum_ms", "coalesce(sum(r.total_ms), 0)"),
    ("queue_n", "count(r.queue_ms)"),
    ("queue_sum_ms", "coalesce(sum(r.queue_ms), 0)"),
    ("tps_n", "count(r.tokens_per_second)"),
    ("tps_sum", "coalesce(sum(r.tokens_per_second), 0)"),
]
KEY = "hour, alias, model_id, worker_id, traffic_class"
KEY_OF_R = (
    "date_trunc('hour', r.created_at, 'UTC'), coalesce(r.alias, ''), "
    "coalesce(r.model_id, 0), coalesce(r.worker_id, 0), r.traffic_class"
)
COLUMNS = ", ".join(name for name, _ in COUNTERS)
SOURCES = ", ".join(source for _, source in COUNTERS)
ADD_UP = ", ".join(f"{name} = h.{name} + excluded.{name}" for name, _ in COUNTERS)


def hourly_insert(rows: str, where: str) -> str:
    """INSERT of the hourly counters of rows (a table name) restricted by where."""
    return f"""
      INSERT INTO requests_hourly AS h ({KEY}, {COLUMNS})
      SELECT {KEY_OF_R}, {SOURCES}
      FROM {rows} r WHERE {where}
      GROUP BY 1, 2, 3, 4, 5
      ON CONFLICT ({KEY}) DO UPDATE SET {ADD_UP}
    """


def latency_insert(rows: str, where: str) -> str:
    return f"""
      INSERT INTO latency_hourly AS l ({KEY}, metric, bin, n)
      SELECT {KEY_OF_R}, m.metric, herd_latency_bin(m.ms), count(*)
      FROM {rows} r
      CROSS JOIN LATERAL (VALUES ('ttft', r.ttft_ms), ('total', r.total_ms),
                                 ('queue', r.queue_ms)) AS m(metric, ms)
      WHERE m.ms IS NOT NULL AND {where}
      GROUP BY 1, 2, 3, 4, 5, 6, 7
      ON CONFLICT ({KEY}, metric, bin) DO UPDATE SET n = l.n + excluded.n
    """


def feedback_counts(rows: str, where: str = "true") -> str:
    return f"""
      SELECT {KEY_OF_R.replace(", r.traffic_class", "")}, r.traffic_class,
             count(*) AS ratings, count(*) FILTER (WHERE f.rating = 1) AS thumbs_up,
             count(*) FILTER (WHERE coalesce(f.comment, '') <> '') AS comments
      FROM {rows} f JOIN requests r ON r.id = f.request_id
      WHERE {where}
      GROUP BY 1, 2, 3, 4, 5
    """


REQUESTS_ROLLUP = f"""
    CREATE OR REPLACE FUNCTION herd_requests_rollup() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      {hourly_insert("new_rows", "true")};
      {latency_insert("new_rows", "true")};
      RETURN NULL;
    END
    $$
"""

# The session part of 0005's request trigger, unchanged, on its own.
SESSION_ROWS = """
      SELECT session_id, max(alias) FILTER (WHERE rn = 1), max(model_id) FILTER (WHERE rn = 1),
             min(created_at), max(created_at), count(*),
             count(*) FILTER (WHERE prompt_tokens > 0 AND prompt_tokens = prev_prompt_tokens),
             max(prompt_tokens) FILTER (WHERE rn = n), max(prompt_tokens) FILTER (WHERE rn = 1)
      FROM (
        SELECT session_id, created_at, alias, model_id, prompt_tokens,
               row_number() OVER w AS rn, count(*) OVER (PARTITION BY session_id) AS n,
               lag(prompt_tokens) OVER w AS prev_prompt_tokens
        FROM {rows} WHERE {where}
        WINDOW w AS (PARTITION BY session_id ORDER BY created_at, id)
      ) o
      GROUP BY session_id
"""
SESSION_COLUMNS = """session_id, alias, model_id, first_at, last_at, turns, regenerates,
        last_prompt_tokens, first_prompt_tokens"""

SESSIONS_ROLLUP = f"""
    CREATE FUNCTION herd_request_sessions_rollup() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO request_sessions AS s ({SESSION_COLUMNS})
      {SESSION_ROWS.format(rows="new_rows", where="session_id IS NOT NULL")}
      ON CONFLICT (session_id) DO UPDATE SET
        alias = CASE WHEN excluded.first_at < s.first_at THEN excluded.alias ELSE s.alias END,
        model_id = CASE WHEN excluded.first_at < s.first_at
                        THEN excluded.model_id ELSE s.model_id END,
        first_at = least(s.first_at, excluded.first_at),
        last_at = greatest(s.last_at, excluded.last_at),
        turns = s.turns + excluded.turns,
        regenerates = s.regenerates + excluded.regenerates
          + CASE WHEN excluded.first_prompt_tokens > 0
                  AND excluded.first_prompt_tokens = s.last_prompt_tokens THEN 1 ELSE 0 END,
        last_prompt_tokens = CASE WHEN excluded.last_at >= s.last_at
                                  THEN excluded.last_prompt_tokens
                                  ELSE s.last_prompt_tokens END;
      RETURN NULL;
    END
    $$
"""

SESSIONS_TRIGGER = """
    CREATE TRIGGER requests_sessions_rollup AFTER INSERT ON requests
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herd_request_sessions_rollup()
"""

FEEDBACK_ROLLUP = f"""
    CREATE OR REPLACE FUNCTION herd_feedback_rollup() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO requests_hourly AS h ({KEY}, ratings, thumbs_up, comments)
        {feedback_counts("new_rows")}
        ON CONFLICT ({KEY}) DO UPDATE SET
          ratings = h.ratings + excluded.ratings,
          thumbs_up = h.thumbs_up + excluded.thumbs_up,
          comments = h.comments + excluded.comments;
      END IF;
      IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE requests_hourly h SET
          ratings = h.ratings - d.ratings,
          thumbs_up = h.thumbs_up - d.thumbs_up,
          comments = h.comments - d.comments
        FROM ({feedback_counts("old_rows")}) d(hour, alias, model_id, worker_id,
                                               traffic_class, ratings, thumbs_up, comments)
        WHERE (h.hour, h.alias, h.model_id, h.worker_id, h.traffic_class)
            = (d.hour, d.alias, d.model_id, d.worker_id, d.traffic_class);
      END IF;
      RETURN NULL;
    END
    $$
"""

REBUILD_SESSIONS = f"""
    CREATE FUNCTION herd_rebuild_request_sessions(lo timestamptz, hi timestamptz) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
      deleted text[];
      touched text[];
    BEGIN
      WITH d AS (
        DELETE FROM request_sessions s
        WHERE s.last_at >= lo AND s.first_at < hi
        RETURNING s.session_id
      )
      SELECT array_agg(session_id) INTO deleted FROM d;
      touched := ARRAY(
        SELECT unnest(coalesce(deleted, '{{}}'))
        UNION
        SELECT session_id FROM requests
        WHERE created_at >= lo AND created_at < hi AND session_id IS NOT NULL);
      DELETE FROM request_sessions WHERE session_id = ANY(touched);
      INSERT INTO request_sessions ({SESSION_COLUMNS})
      {SESSION_ROWS.format(rows="requests", where="session_id = ANY(touched)")};
    END
    $$
"""

IN_HOURS = "r.created_at >= lo AND r.created_at < hi"

REBUILD_ROLLUPS = f"""
    CREATE OR REPLACE FUNCTION herd_rebuild_rollups(from_ts timestamptz, to_ts timestamptz)
    RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
      lo timestamptz := date_trunc('hour', from_ts, 'UTC');
      hi timestamptz := date_trunc('hour', to_ts, 'UTC') + interval '1 hour';
    BEGIN
      DELETE FROM requests_hourly WHERE hour >= lo AND hour < hi;
      DELETE FROM latency_hourly WHERE hour >= lo AND hour < hi;
      {hourly_insert("requests", IN_HOURS)};
      UPDATE requests_hourly h SET
        ratings = d.ratings, thumbs_up = d.thumbs_up, comments = d.comments
      FROM ({feedback_counts("feedback", IN_HOURS)}) d(hour, alias, model_id, worker_id,
                                                        traffic_class, ratings, thumbs_up,
                                                        comments)
      WHERE (h.hour, h.alias, h.model_id, h.worker_id, h.traffic_class)
          = (d.hour, d.alias, d.model_id, d.worker_id, d.traffic_class);
      {latency_insert("requests", IN_HOURS)};
      PERFORM herd_rebuild_request_sessions(lo, hi);
    END
    $$
"""

# Hours before the oldest raw row (expired) keep their rollups: split their batch lines
# into a 'batch' row first. The rebuild starts at the first hour whose raw rows are whole.
SPLIT_OLD_BATCH_COUNTS = """
    INSERT INTO requests_hourly (hour, alias, model_id, worker_id, traffic_class, requests)
    SELECT hour, alias, model_id, worker_id, 'batch', batch_requests
    FROM requests_hourly WHERE batch_requests > 0;
    UPDATE requests_hourly SET requests = requests - batch_requests
    WHERE batch_requests > 0 AND traffic_class = 'live';
"""

REBUILD_COVERED_HOURS = """
    DO $$
    DECLARE
      first_raw timestamptz;
      last_raw timestamptz;
    BEGIN
      SELECT min(created_at), max(created_at) INTO first_raw, last_raw FROM requests;
      IF first_raw IS NULL THEN
        RETURN;
      END IF;
      IF EXISTS (SELECT 1 FROM requests_hourly
                 WHERE hour < date_trunc('hour', first_raw, 'UTC')) THEN
        first_raw := date_trunc('hour', first_raw, 'UTC') + interval '1 hour';
      END IF;
      IF first_raw <= last_raw THEN
        PERFORM herd_rebuild_rollups(first_raw, last_raw);
      END IF;
    END
    $$
"""

V_REQUESTS = """
    CREATE OR REPLACE VIEW v_requests AS
    SELECT r.id, r.created_at, r.alias, r.model_id, m.name AS model_name,
           m.sha256 AS model_sha256, m.quantization AS model_quantization,
           r.deployment_id, r.worker_id, r.api_key_id, r.session_id, r.user_id, r.endpoint,
           r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.queue_ms, r.ttft_ms,
           r.total_ms, r.tokens_per_second, r.status, r.http_status, r.error, r.cache_hit,
           herd_is_error(r.status, r.http_status) AS is_error, r.synthetic,
           r.traffic_class, r.finish_reason, r.batch_id
    FROM requests r LEFT JOIN models m ON m.id = r.model_id
"""


def _rekey(table: str, columns: list[str]) -> None:
    op.execute(f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}")
    op.create_primary_key(f"pk_{table}", table, columns)


def upgrade() -> None:
    op.add_column(
        "requests",
        sa.Column("traffic_class", sa.Text(), sa.Computed(TRAFFIC_CLASS, persisted=True)),
    )
    op.add_column("requests", sa.Column("finish_reason", sa.Text(), nullable=True))
    for table in ("requests_hourly", "latency_hourly"):
        op.add_column(
            table,
            sa.Column("traffic_class", sa.Text(), server_default="live", nullable=False),
        )
    op.add_column(
        "requests_hourly",
        sa.Column("client_errors", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    _rekey("requests_hourly", ["hour", "alias", "model_id", "worker_id", "traffic_class"])
    _rekey(
        "latency_hourly",
        ["hour", "alias", "model_id", "worker_id", "traffic_class", "metric", "bin"],
    )
    op.execute(SPLIT_OLD_BATCH_COUNTS)
    op.execute("DROP TRIGGER requests_batch_rollup ON requests")
    op.execute("DROP FUNCTION herd_batch_rollup()")
    op.drop_column("requests_hourly", "batch_requests")

    op.execute(REQUESTS_ROLLUP)
    op.execute(SESSIONS_ROLLUP)
    op.execute(SESSIONS_TRIGGER)
    op.execute(FEEDBACK_ROLLUP)
    op.execute(REBUILD_SESSIONS)
    op.execute(REBUILD_ROLLUPS)
    op.execute(REBUILD_COVERED_HOURS)
    op.execute(V_REQUESTS)
    # Tiles and charts filter every range by class; the rollups' key starts with the hour.
    op.create_index(
        "ix_requests_traffic_class_created_at",
        "requests",
        ["traffic_class", "created_at"],
        postgresql_where=sa.text("traffic_class <> 'live'"),
    )


def _released(name: str) -> ModuleType:
    """A released revision's module (never edited), for the SQL a downgrade restores."""
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"herd_revision_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOURLY_ALL = [name for name, _ in COUNTERS if name != "client_errors"] + [
    "ratings",
    "thumbs_up",
    "comments",
]
OLD_KEY = "hour, alias, model_id, worker_id"


def downgrade() -> None:
    op.drop_index("ix_requests_traffic_class_created_at", table_name="requests")
    op.execute("DROP TRIGGER requests_sessions_rollup ON requests")
    op.execute("DROP FUNCTION herd_request_sessions_rollup()")
    op.execute("DROP FUNCTION herd_rebuild_request_sessions(timestamptz, timestamptz)")
    # Classes collapse into one row per old key; batch lines go back to batch_requests.
    sums = ", ".join(f"sum({name}) AS {name}" for name in HOURLY_ALL)
    op.execute(
        f"CREATE TEMP TABLE hourly_0019 AS SELECT {OLD_KEY}, {sums}, "
        "coalesce(sum(requests) FILTER (WHERE traffic_class = 'batch'), 0) AS batch_requests "
        f"FROM requests_hourly GROUP BY {OLD_KEY}"
    )
    op.execute(
        f"CREATE TEMP TABLE latency_0019 AS SELECT {OLD_KEY}, metric, bin, sum(n) AS n "
        f"FROM latency_hourly GROUP BY {OLD_KEY}, metric, bin"
    )
    op.execute("DELETE FROM requests_hourly")
    op.execute("DELETE FROM latency_hourly")
    op.add_column(
        "requests_hourly",
        sa.Column("batch_requests", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    _rekey("requests_hourly", OLD_KEY.split(", "))
    _rekey("latency_hourly", [*OLD_KEY.split(", "), "metric", "bin"])
    for table in ("requests_hourly", "latency_hourly"):
        op.drop_column(table, "traffic_class")
    op.drop_column("requests_hourly", "client_errors")
    columns = ", ".join([*HOURLY_ALL, "batch_requests"])
    op.execute(
        f"INSERT INTO requests_hourly ({OLD_KEY}, {columns}) "
        f"SELECT {OLD_KEY}, {columns} FROM hourly_0019"
    )
    op.execute(
        f"INSERT INTO latency_hourly ({OLD_KEY}, metric, bin, n) "
        f"SELECT {OLD_KEY}, metric, bin, n FROM latency_0019"
    )
    op.execute("DROP TABLE hourly_0019")
    op.execute("DROP TABLE latency_0019")
    # 0005's request, feedback and rebuild functions (its list: bin, is_error, quantiles,
    # requests rollup, feedback rollup, rebuild) and 0016's batch counter.
    analytics, batches = _released("0005_analytics.py"), _released("0016_batches.py")
    for sql in analytics.FUNCTIONS[3:]:
        op.execute(sql.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(batches.BATCH_ROLLUP)
    op.execute(batches.BATCH_TRIGGER)
    op.execute("DROP VIEW v_requests")
    op.execute(analytics.VIEWS[0])
    op.drop_column("requests", "finish_reason")
    op.drop_column("requests", "traffic_class")
