"""client_errors: 4xx answers are the client's mistakes, not errors of the service; histogram
quantiles by nearest rank

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-01

- `herd_is_error` now means a server-side failure: a 5xx, or a call that failed without an
  HTTP status (a stream cut mid-way). A 4xx (unknown alias, bad parameter, rate limit) no
  longer counts, so one client's 404 cannot read as a 50 % error rate. The rollups' `errors`
  are corrected for the 4xx rows they counted before.
- `herd_is_client_error` names the 4xx answers (a client that hung up is neither); the partial index
  `ix_requests_client_errors` lets tiles count them over any range (they are few) without
  touching the rollup trigger.
- `herd_hist_quantiles` takes the rank q*N, as Prometheus' histogram_quantile does, instead
  of percentile_cont's q*(N-1): with few calls the latter returned the lowest call's bin
  (p95 of one 1 ms 404 and one 1 s answer read 1 ms).
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None

IS_ERROR_OLD = """
    CREATE OR REPLACE FUNCTION herd_is_error(status text, http_status smallint) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
      SELECT status IN ('error', 'rejected') OR coalesce(http_status >= 500, false)
    $$
"""

IS_ERROR_NEW = """
    CREATE OR REPLACE FUNCTION herd_is_error(status text, http_status smallint) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
      SELECT coalesce(http_status >= 500,
                      http_status IS NULL AND status IN ('error', 'rejected'), false)
    $$
"""

IS_CLIENT_ERROR = """
    CREATE FUNCTION herd_is_client_error(status text, http_status smallint) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
      SELECT status IS DISTINCT FROM 'cancelled'
             AND coalesce(http_status BETWEEN 400 AND 499, false)
    $$
"""

# The hourly error counts of the past, less the 4xx rows the old definition counted.
FIX_ERRORS = """
    UPDATE requests_hourly h SET errors = h.errors - c.n
    FROM (
      SELECT date_trunc('hour', created_at, 'UTC') AS hour, coalesce(alias, '') AS alias,
             coalesce(model_id, 0) AS model_id, coalesce(worker_id, 0) AS worker_id,
             count(*) AS n
      FROM requests
      WHERE http_status BETWEEN 400 AND 499 AND status IN ('error', 'rejected')
      GROUP BY 1, 2, 3, 4
    ) c
    WHERE h.hour = c.hour AND h.alias = c.alias AND h.model_id = c.model_id
      AND h.worker_id = c.worker_id
"""

UNFIX_ERRORS = FIX_ERRORS.replace("h.errors - c.n", "h.errors + c.n")

QUANTILES = """
    CREATE OR REPLACE FUNCTION herd_hist_quantiles(
      bins smallint[], counts bigint[], qs double precision[])
    RETURNS double precision[]
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
    DECLARE
      total bigint := 0;
      cum bigint;
      rank double precision;
      result double precision[] := '{}';
      q double precision;
      i int;
    BEGIN
      IF bins IS NULL OR array_length(bins, 1) IS NULL THEN
        RETURN array_fill(NULL::double precision, ARRAY[array_length(qs, 1)]);
      END IF;
      SELECT sum(c) INTO total FROM unnest(counts) AS c;
      IF total IS NULL OR total <= 0 THEN
        RETURN array_fill(NULL::double precision, ARRAY[array_length(qs, 1)]);
      END IF;
      FOREACH q IN ARRAY qs LOOP
        -- The value below which a share q of the calls lie: the bin holding call number
        -- q*N (counted from 1), interpolated geometrically inside that bin.
        rank := greatest(q * total, 1e-9);
        cum := 0;
        FOR i IN 1 .. array_length(bins, 1) LOOP
          IF counts[i] > 0 AND cum + counts[i] >= rank THEN
            result := result || power(2.0, (bins[i] + (rank - cum) / counts[i]) / 8.0);
            EXIT;
          END IF;
          cum := cum + counts[i];
        END LOOP;
      END LOOP;
      RETURN result;
    END
    $$
"""

QUANTILES_OLD = """
    CREATE OR REPLACE FUNCTION herd_hist_quantiles(
      bins smallint[], counts bigint[], qs double precision[])
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
"""


def upgrade() -> None:
    op.create_index(
        "ix_requests_client_errors",
        "requests",
        ["created_at"],
        postgresql_where="http_status BETWEEN 400 AND 499",
    )
    op.execute(FIX_ERRORS)
    op.execute(IS_ERROR_NEW)
    op.execute(IS_CLIENT_ERROR)
    op.execute(QUANTILES)


def downgrade() -> None:
    op.execute(QUANTILES_OLD)
    op.execute("DROP FUNCTION herd_is_client_error(text, smallint)")
    op.execute(IS_ERROR_OLD)
    op.execute(UNFIX_ERRORS)
    op.drop_index("ix_requests_client_errors", table_name="requests")
