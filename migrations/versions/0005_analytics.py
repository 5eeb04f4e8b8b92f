"""analytics: rollups kept on write, analyst views, feedback review, retraining decisions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

Rollups. `requests_hourly` (counts and sums per hour, alias, model, worker) and
`latency_hourly` (a log-spaced latency histogram per hour, alias, model, worker and metric:
bins merge by addition, so any range of hours yields percentiles) and `request_sessions`
(one row per chat session) are maintained by statement-level triggers on INSERT into
`requests` and on INSERT/UPDATE/DELETE of `feedback`: every writer (gateway, psql, the demo
generator) keeps them current, one aggregate per statement, with nothing to schedule.
Deleting requests does not subtract from them on purpose (rollups outlive raw-row expiry);
whoever deletes rows that should vanish from the charts calls
`herd_rebuild_rollups(from, to)` for the hours concerned, as `herd demo-traffic --delete` does.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Histogram bins: 8 per octave of milliseconds, bin b holding [2^(b/8), 2^((b+1)/8)) ms
# (about 9 % wide), 160 bins up to 2^20 ms (17 minutes); lower and higher values clamp.
FUNCTIONS = [
    """
    CREATE FUNCTION herd_latency_bin(ms double precision) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
      SELECT least(greatest(floor(8 * ln(greatest(ms, 1.0)) / ln(2.0)), 0), 159)::smallint
    $$
    """,
    """
    CREATE FUNCTION herd_is_error(status text, http_status smallint) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
      SELECT status IN ('error', 'rejected') OR coalesce(http_status >= 500, false)
    $$
    """,
    # Quantiles (percentile_cont's rank q*(N-1)) of a histogram given as sorted bins and
    # their counts; within a bin the value is interpolated geometrically.
    """
    CREATE FUNCTION herd_hist_quantiles(bins smallint[], counts bigint[], qs double precision[])
    RETURNS double precision[]
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
    DECLARE
      total bigint := 0;
      cum bigint;
      rank double precision;
      result double precision[] := '{}';
      q double precision;
      i int;
      frac double precision;
    BEGIN
      IF bins IS NULL OR array_length(bins, 1) IS NULL THEN
        RETURN array_fill(NULL::double precision, ARRAY[array_length(qs, 1)]);
      END IF;
      SELECT sum(c) INTO total FROM unnest(counts) AS c;
      IF total IS NULL OR total <= 0 THEN
        RETURN array_fill(NULL::double precision, ARRAY[array_length(qs, 1)]);
      END IF;
      FOREACH q IN ARRAY qs LOOP
        rank := q * (total - 1);
        cum := 0;
        FOR i IN 1 .. array_length(bins, 1) LOOP
          IF counts[i] > 0 AND cum + counts[i] > rank THEN
            frac := (rank - cum + 0.5) / counts[i];
            result := result || power(2.0, (bins[i] + least(frac, 1.0)) / 8.0);
            EXIT;
          END IF;
          cum := cum + counts[i];
          IF i = array_length(bins, 1) THEN
            result := result || power(2.0, (bins[i] + 1) / 8.0);
          END IF;
        END LOOP;
      END LOOP;
      RETURN result;
    END
    $$
    """,
    # Requests: hourly counts, latency histograms, sessions. A regenerate is a request whose
    # prompt is as long (in tokens) as the session's previous one: a new turn always adds
    # tokens, a resend of the same conversation does not. Regenerates are counted per session.
    """
    CREATE FUNCTION herd_requests_rollup() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO requests_hourly AS h (
        hour, alias, model_id, worker_id, requests, errors, cache_hits,
        prompt_tokens, completion_tokens, ttft_n, ttft_sum_ms, total_n, total_sum_ms,
        queue_n, queue_sum_ms, tps_n, tps_sum)
      SELECT date_trunc('hour', r.created_at, 'UTC'), coalesce(r.alias, ''),
             coalesce(r.model_id, 0), coalesce(r.worker_id, 0), count(*),
             count(*) FILTER (WHERE herd_is_error(r.status, r.http_status)),
             count(*) FILTER (WHERE r.cache_hit),
             coalesce(sum(r.prompt_tokens), 0), coalesce(sum(r.completion_tokens), 0),
             count(r.ttft_ms), coalesce(sum(r.ttft_ms), 0),
             count(r.total_ms), coalesce(sum(r.total_ms), 0),
             count(r.queue_ms), coalesce(sum(r.queue_ms), 0),
             count(r.tokens_per_second), coalesce(sum(r.tokens_per_second), 0)
      FROM new_rows r
      GROUP BY 1, 2, 3, 4
      ON CONFLICT (hour, alias, model_id, worker_id) DO UPDATE SET
        requests = h.requests + excluded.requests,
        errors = h.errors + excluded.errors,
        cache_hits = h.cache_hits + excluded.cache_hits,
        prompt_tokens = h.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = h.completion_tokens + excluded.completion_tokens,
        ttft_n = h.ttft_n + excluded.ttft_n,
        ttft_sum_ms = h.ttft_sum_ms + excluded.ttft_sum_ms,
        total_n = h.total_n + excluded.total_n,
        total_sum_ms = h.total_sum_ms + excluded.total_sum_ms,
        queue_n = h.queue_n + excluded.queue_n,
        queue_sum_ms = h.queue_sum_ms + excluded.queue_sum_ms,
        tps_n = h.tps_n + excluded.tps_n,
        tps_sum = h.tps_sum + excluded.tps_sum;

      INSERT INTO latency_hourly AS l (hour, alias, model_id, worker_id, metric, bin, n)
      SELECT date_trunc('hour', r.created_at, 'UTC'), coalesce(r.alias, ''),
             coalesce(r.model_id, 0), coalesce(r.worker_id, 0), m.metric,
             herd_latency_bin(m.ms), count(*)
      FROM new_rows r
      CROSS JOIN LATERAL (VALUES ('ttft', r.ttft_ms), ('total', r.total_ms),
                                 ('queue', r.queue_ms)) AS m(metric, ms)
      WHERE m.ms IS NOT NULL
      GROUP BY 1, 2, 3, 4, 5, 6
      ON CONFLICT (hour, alias, model_id, worker_id, metric, bin) DO UPDATE SET
        n = l.n + excluded.n;

      -- The first turn of a session in this batch is compared with the session's last
      -- stored turn in the ON CONFLICT branch: one index probe per session, no join.
      INSERT INTO request_sessions AS s (
        session_id, alias, model_id, first_at, last_at, turns, regenerates,
        last_prompt_tokens, first_prompt_tokens)
      SELECT session_id, max(alias) FILTER (WHERE rn = 1), max(model_id) FILTER (WHERE rn = 1),
             min(created_at), max(created_at), count(*),
             count(*) FILTER (WHERE prompt_tokens > 0 AND prompt_tokens = prev_prompt_tokens),
             max(prompt_tokens) FILTER (WHERE rn = n), max(prompt_tokens) FILTER (WHERE rn = 1)
      FROM (
        SELECT session_id, created_at, alias, model_id, prompt_tokens,
               row_number() OVER w AS rn, count(*) OVER (PARTITION BY session_id) AS n,
               lag(prompt_tokens) OVER w AS prev_prompt_tokens
        FROM new_rows WHERE session_id IS NOT NULL
        WINDOW w AS (PARTITION BY session_id ORDER BY created_at, id)
      ) o
      GROUP BY session_id
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
    """,
    # Feedback counts live on the hour of the rated request, so ratios line up with traffic.
    # One function for the three triggers (PostgreSQL allows transition tables only on
    # single-event triggers); only the branch for the firing event touches its tables.
    """
    CREATE FUNCTION herd_feedback_rollup() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO requests_hourly AS h (hour, alias, model_id, worker_id,
                                          ratings, thumbs_up, comments)
        SELECT date_trunc('hour', r.created_at, 'UTC'), coalesce(r.alias, ''),
               coalesce(r.model_id, 0), coalesce(r.worker_id, 0), count(*),
               count(*) FILTER (WHERE f.rating = 1),
               count(*) FILTER (WHERE coalesce(f.comment, '') <> '')
        FROM new_rows f JOIN requests r ON r.id = f.request_id
        GROUP BY 1, 2, 3, 4
        ON CONFLICT (hour, alias, model_id, worker_id) DO UPDATE SET
          ratings = h.ratings + excluded.ratings,
          thumbs_up = h.thumbs_up + excluded.thumbs_up,
          comments = h.comments + excluded.comments;
      END IF;
      IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE requests_hourly h SET
          ratings = h.ratings - d.ratings,
          thumbs_up = h.thumbs_up - d.thumbs_up,
          comments = h.comments - d.comments
        FROM (
          SELECT date_trunc('hour', r.created_at, 'UTC') AS hour, coalesce(r.alias, '') AS alias,
                 coalesce(r.model_id, 0) AS model_id, coalesce(r.worker_id, 0) AS worker_id,
                 count(*) AS ratings, count(*) FILTER (WHERE f.rating = 1) AS thumbs_up,
                 count(*) FILTER (WHERE coalesce(f.comment, '') <> '') AS comments
          FROM old_rows f JOIN requests r ON r.id = f.request_id
          GROUP BY 1, 2, 3, 4
        ) d
        WHERE (h.hour, h.alias, h.model_id, h.worker_id)
            = (d.hour, d.alias, d.model_id, d.worker_id);
      END IF;
      RETURN NULL;
    END
    $$
    """,
    # Recompute the rollups of whole hours [from, to] from the raw rows.
    """
    CREATE FUNCTION herd_rebuild_rollups(from_ts timestamptz, to_ts timestamptz)
    RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
      lo timestamptz := date_trunc('hour', from_ts, 'UTC');
      hi timestamptz := date_trunc('hour', to_ts, 'UTC') + interval '1 hour';
      deleted text[];
      touched text[];
    BEGIN
      DELETE FROM requests_hourly WHERE hour >= lo AND hour < hi;
      DELETE FROM latency_hourly WHERE hour >= lo AND hour < hi;

      INSERT INTO requests_hourly (
        hour, alias, model_id, worker_id, requests, errors, cache_hits,
        prompt_tokens, completion_tokens, ttft_n, ttft_sum_ms, total_n, total_sum_ms,
        queue_n, queue_sum_ms, tps_n, tps_sum)
      SELECT date_trunc('hour', r.created_at, 'UTC'), coalesce(r.alias, ''),
             coalesce(r.model_id, 0), coalesce(r.worker_id, 0), count(*),
             count(*) FILTER (WHERE herd_is_error(r.status, r.http_status)),
             count(*) FILTER (WHERE r.cache_hit),
             coalesce(sum(r.prompt_tokens), 0), coalesce(sum(r.completion_tokens), 0),
             count(r.ttft_ms), coalesce(sum(r.ttft_ms), 0),
             count(r.total_ms), coalesce(sum(r.total_ms), 0),
             count(r.queue_ms), coalesce(sum(r.queue_ms), 0),
             count(r.tokens_per_second), coalesce(sum(r.tokens_per_second), 0)
      FROM requests r
      WHERE r.created_at >= lo AND r.created_at < hi
      GROUP BY 1, 2, 3, 4;

      UPDATE requests_hourly h SET
        ratings = d.ratings, thumbs_up = d.thumbs_up, comments = d.comments
      FROM (
        SELECT date_trunc('hour', r.created_at, 'UTC') AS hour, coalesce(r.alias, '') AS alias,
               coalesce(r.model_id, 0) AS model_id, coalesce(r.worker_id, 0) AS worker_id,
               count(*) AS ratings, count(*) FILTER (WHERE f.rating = 1) AS thumbs_up,
               count(*) FILTER (WHERE coalesce(f.comment, '') <> '') AS comments
        FROM feedback f JOIN requests r ON r.id = f.request_id
        WHERE r.created_at >= lo AND r.created_at < hi
        GROUP BY 1, 2, 3, 4
      ) d
      WHERE (h.hour, h.alias, h.model_id, h.worker_id)
          = (d.hour, d.alias, d.model_id, d.worker_id);

      INSERT INTO latency_hourly (hour, alias, model_id, worker_id, metric, bin, n)
      SELECT date_trunc('hour', r.created_at, 'UTC'), coalesce(r.alias, ''),
             coalesce(r.model_id, 0), coalesce(r.worker_id, 0), m.metric,
             herd_latency_bin(m.ms), count(*)
      FROM requests r
      CROSS JOIN LATERAL (VALUES ('ttft', r.ttft_ms), ('total', r.total_ms),
                                 ('queue', r.queue_ms)) AS m(metric, ms)
      WHERE m.ms IS NOT NULL AND r.created_at >= lo AND r.created_at < hi
      GROUP BY 1, 2, 3, 4, 5, 6;

      WITH d AS (
        DELETE FROM request_sessions s
        WHERE s.last_at >= lo AND s.first_at < hi
        RETURNING s.session_id
      )
      SELECT array_agg(session_id) INTO deleted FROM d;
      touched := ARRAY(
        SELECT unnest(coalesce(deleted, '{}'))
        UNION
        SELECT session_id FROM requests
        WHERE created_at >= lo AND created_at < hi AND session_id IS NOT NULL);
      DELETE FROM request_sessions WHERE session_id = ANY(touched);
      INSERT INTO request_sessions (
        session_id, alias, model_id, first_at, last_at, turns, regenerates,
        last_prompt_tokens, first_prompt_tokens)
      SELECT session_id, max(alias) FILTER (WHERE rn = 1), max(model_id) FILTER (WHERE rn = 1),
             min(created_at), max(created_at), count(*),
             count(*) FILTER (WHERE prompt_tokens > 0 AND prompt_tokens = prev_prompt_tokens),
             max(prompt_tokens) FILTER (WHERE rn = n), max(prompt_tokens) FILTER (WHERE rn = 1)
      FROM (
        SELECT session_id, created_at, alias, model_id, prompt_tokens,
               row_number() OVER w AS rn, count(*) OVER (PARTITION BY session_id) AS n,
               lag(prompt_tokens) OVER w AS prev_prompt_tokens
        FROM requests WHERE session_id = ANY(touched)
        WINDOW w AS (PARTITION BY session_id ORDER BY created_at, id)
      ) o
      GROUP BY session_id;
    END
    $$
    """,
]

TRIGGERS = [
    """
    CREATE TRIGGER requests_rollup AFTER INSERT ON requests
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herd_requests_rollup()
    """,
    """
    CREATE TRIGGER feedback_rollup_insert AFTER INSERT ON feedback
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herd_feedback_rollup()
    """,
    """
    CREATE TRIGGER feedback_rollup_update AFTER UPDATE ON feedback
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herd_feedback_rollup()
    """,
    """
    CREATE TRIGGER feedback_rollup_delete AFTER DELETE ON feedback
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herd_feedback_rollup()
    """,
]

# Analyst views: documented in the README; they are not ORM tables.
VIEWS = [
    """
    CREATE VIEW v_requests AS
    SELECT r.id, r.created_at, r.alias, r.model_id, m.name AS model_name,
           m.sha256 AS model_sha256, m.quantization AS model_quantization,
           r.deployment_id, r.worker_id, r.api_key_id, r.session_id, r.user_id, r.endpoint,
           r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.queue_ms, r.ttft_ms,
           r.total_ms, r.tokens_per_second, r.status, r.http_status, r.error, r.cache_hit,
           herd_is_error(r.status, r.http_status) AS is_error, r.synthetic
    FROM requests r LEFT JOIN models m ON m.id = r.model_id
    """,
    """
    CREATE VIEW v_feedback AS
    SELECT f.id AS feedback_id, f.request_id, f.created_at, f.updated_at, f.rating,
           f.comment, f.user_id AS rated_by, r.created_at AS request_created_at, r.alias,
           r.model_id, m.name AS model_name, r.session_id, r.user_id, msg.prompt,
           msg.response, c.response AS corrected_response,
           ARRAY(SELECT t.tag FROM feedback_tags t
                 WHERE t.request_id = f.request_id ORDER BY t.tag) AS tags,
           r.synthetic
    FROM feedback f
    JOIN requests r ON r.id = f.request_id
    LEFT JOIN models m ON m.id = r.model_id
    LEFT JOIN messages msg ON msg.request_id = f.request_id
    LEFT JOIN feedback_corrections c ON c.request_id = f.request_id
    """,
    # Days in the session's TimeZone; built from the rollups, so it is fast at any size.
    """
    CREATE VIEW v_model_daily AS
    WITH d AS (
      SELECT date_trunc('day', hour) AS day, model_id, sum(requests) AS requests,
             sum(errors) AS errors, sum(cache_hits) AS cache_hits,
             sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
             sum(ratings) AS ratings, sum(thumbs_up) AS thumbs_up, sum(comments) AS comments,
             sum(tps_sum) / nullif(sum(tps_n), 0) AS tokens_per_second
      FROM requests_hourly GROUP BY 1, 2
    ), l AS (
      SELECT day, model_id, metric,
             herd_hist_quantiles(array_agg(bin ORDER BY bin), array_agg(n ORDER BY bin),
                                 ARRAY[0.5, 0.95]) AS q
      FROM (SELECT date_trunc('day', hour) AS day, model_id, metric, bin, sum(n)::bigint AS n
            FROM latency_hourly GROUP BY 1, 2, 3, 4) b
      GROUP BY 1, 2, 3
    )
    SELECT d.day, nullif(d.model_id, 0) AS model_id, m.name AS model_name, d.requests,
           d.errors, d.errors::double precision / nullif(d.requests, 0) AS error_rate,
           d.cache_hits, d.prompt_tokens, d.completion_tokens, d.tokens_per_second,
           ttft.q[1] AS ttft_p50_ms, ttft.q[2] AS ttft_p95_ms,
           total.q[1] AS total_p50_ms, total.q[2] AS total_p95_ms,
           d.ratings, d.thumbs_up, d.comments,
           d.ratings::double precision / nullif(d.requests, 0) AS feedback_rate,
           d.thumbs_up::double precision / nullif(d.ratings, 0) AS thumbs_up_ratio
    FROM d
    LEFT JOIN models m ON m.id = d.model_id
    LEFT JOIN l ttft ON ttft.day = d.day AND ttft.model_id = d.model_id
                    AND ttft.metric = 'ttft'
    LEFT JOIN l total ON total.day = d.day AND total.model_id = d.model_id
                     AND total.metric = 'total'
    """,
]


def _created_at(name: str = "created_at") -> sa.Column[Any]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def _counter(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)


def _sum(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Double(), server_default=sa.text("0"), nullable=False)


def upgrade() -> None:
    op.add_column(
        "requests",
        sa.Column("synthetic", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_table(
        "retraining_decisions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=True),
        sa.Column("alias", sa.Text(), nullable=True),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("recommendation", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=False),
        _created_at(),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "signals",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "decision IN ('retrain', 'rollback', 'keep')",
            name=op.f("ck_retraining_decisions_decision"),
        ),
        sa.CheckConstraint(
            "period_end > period_start", name=op.f("ck_retraining_decisions_period")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_retraining_decisions_model_id_models"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retraining_decisions")),
    )
    op.create_index(
        "ix_retraining_decisions_model_id_created_at",
        "retraining_decisions",
        ["model_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "feedback_tags",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("tag", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        _created_at(),
        sa.CheckConstraint("length(tag) BETWEEN 1 AND 64", name=op.f("ck_feedback_tags_tag")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_feedback_tags_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_tags")),
    )
    op.create_index(
        "uq_feedback_tags_request_id_tag", "feedback_tags", ["request_id", "tag"], unique=True
    )
    op.create_index("ix_feedback_tags_tag", "feedback_tags", ["tag"], unique=False)
    op.create_table(
        "feedback_corrections",
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("corrected_by", sa.Text(), nullable=False),
        _created_at(),
        _created_at("updated_at"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_feedback_corrections_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_feedback_corrections")),
    )
    op.create_table(
        "requests_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("worker_id", sa.BigInteger(), nullable=False),
        _counter("requests"),
        _counter("errors"),
        _counter("cache_hits"),
        _counter("prompt_tokens"),
        _counter("completion_tokens"),
        _counter("ttft_n"),
        _sum("ttft_sum_ms"),
        _counter("total_n"),
        _sum("total_sum_ms"),
        _counter("queue_n"),
        _sum("queue_sum_ms"),
        _counter("tps_n"),
        _sum("tps_sum"),
        _counter("ratings"),
        _counter("thumbs_up"),
        _counter("comments"),
        sa.PrimaryKeyConstraint(
            "hour", "alias", "model_id", "worker_id", name=op.f("pk_requests_hourly")
        ),
    )
    op.create_table(
        "latency_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("worker_id", sa.BigInteger(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "metric IN ('ttft', 'total', 'queue')", name=op.f("ck_latency_hourly_metric")
        ),
        sa.PrimaryKeyConstraint(
            "hour",
            "alias",
            "model_id",
            "worker_id",
            "metric",
            "bin",
            name=op.f("pk_latency_hourly"),
        ),
    )
    op.create_table(
        "request_sessions",
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("alias", sa.Text(), nullable=True),
        sa.Column("model_id", sa.BigInteger(), nullable=True),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("regenerates", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("first_prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("last_prompt_tokens", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_request_sessions")),
    )
    op.create_index("ix_request_sessions_first_at", "request_sessions", ["first_at"], unique=False)
    for statement in FUNCTIONS + TRIGGERS + VIEWS:
        op.execute(statement)
    # Rows written before this revision get their rollups now.
    op.execute("SELECT herd_rebuild_rollups('-infinity', 'infinity')")


def downgrade() -> None:
    for view in ("v_model_daily", "v_feedback", "v_requests"):
        op.execute(f"DROP VIEW {view}")
    op.execute("DROP TRIGGER feedback_rollup_delete ON feedback")
    op.execute("DROP TRIGGER feedback_rollup_update ON feedback")
    op.execute("DROP TRIGGER feedback_rollup_insert ON feedback")
    op.execute("DROP TRIGGER requests_rollup ON requests")
    op.execute("DROP FUNCTION herd_rebuild_rollups(timestamptz, timestamptz)")
    op.execute("DROP FUNCTION herd_feedback_rollup()")
    op.execute("DROP FUNCTION herd_requests_rollup()")
    op.execute("DROP FUNCTION herd_hist_quantiles(smallint[], bigint[], double precision[])")
    op.execute("DROP FUNCTION herd_is_error(text, smallint)")
    op.execute("DROP FUNCTION herd_latency_bin(double precision)")
    op.drop_index("ix_request_sessions_first_at", table_name="request_sessions")
    op.drop_table("request_sessions")
    op.drop_table("latency_hourly")
    op.drop_table("requests_hourly")
    op.drop_table("feedback_corrections")
    op.drop_index("ix_feedback_tags_tag", table_name="feedback_tags")
    op.drop_index("uq_feedback_tags_request_id_tag", table_name="feedback_tags")
    op.drop_table("feedback_tags")
    op.drop_index("ix_retraining_decisions_model_id_created_at", table_name="retraining_decisions")
    op.drop_table("retraining_decisions")
    op.drop_column("requests", "synthetic")
