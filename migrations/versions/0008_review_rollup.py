"""review_rollup: analytics at 10M rows (sessions per hour, one review row per rated request)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

Measured at 10M requests / 1M feedback rows (bench/RESULTS.md), three page queries read too
many raw rows; this revision gives them rollups kept by statement-level triggers, as 0005 does:

- `sessions_hourly`: sessions, turns, regenerates and one-turn sessions per hour of the
  session's start, alias and model, kept from `request_sessions` by triggers on its INSERT,
  UPDATE and DELETE (so 0005's request trigger and `herd_rebuild_rollups` keep it right with
  no change). A week of sessions is a few hundred rows instead of millions. Sessions still
  going are told apart with the new `ix_request_sessions_last_at`.
- `feedback_reviews`: one row per rated request (net rating, votes, first and last vote,
  last rating time, latest comment, and the request's alias, model and time), recomputed for
  the touched requests on every INSERT/UPDATE/DELETE of `feedback`. The Feedback review list
  reads it instead of grouping every vote; the retraining signals find a version's requests
  with thumbs-down comments through it (`down_comments`) instead of through `requests`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Signed session rows in, per-hour deltas out: +1 for a row that now exists, -1 for one that
# no longer does (an UPDATE is both), so one upsert serves the three events.
SESSIONS_DELTA = """
      INSERT INTO sessions_hourly AS h (hour, alias, model_id, sessions, turns, regenerates,
                                        one_turn)
      SELECT date_trunc('hour', d.first_at, 'UTC'), coalesce(d.alias, ''),
             coalesce(d.model_id, 0), sum(d.sign), sum(d.sign * d.turns),
             sum(d.sign * d.regenerates), coalesce(sum(d.sign) FILTER (WHERE d.turns = 1), 0)
      FROM ({source}) d
      GROUP BY 1, 2, 3
      ON CONFLICT (hour, alias, model_id) DO UPDATE SET
        sessions = h.sessions + excluded.sessions,
        turns = h.turns + excluded.turns,
        regenerates = h.regenerates + excluded.regenerates,
        one_turn = h.one_turn + excluded.one_turn;
"""
SIGNED_NEW = "SELECT 1 AS sign, first_at, alias, model_id, turns, regenerates FROM new_rows"
SIGNED_OLD = "SELECT -1 AS sign, first_at, alias, model_id, turns, regenerates FROM old_rows"

SESSIONS_FUNCTION = f"""
    CREATE FUNCTION herd_sessions_rollup() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'INSERT' THEN
        {SESSIONS_DELTA.format(source=SIGNED_NEW)}
      ELSIF TG_OP = 'UPDATE' THEN
        {SESSIONS_DELTA.format(source=SIGNED_NEW + " UNION ALL " + SIGNED_OLD)}
      ELSE
        {SESSIONS_DELTA.format(source=SIGNED_OLD)}
      END IF;
      RETURN NULL;
    END
    $$
"""

# The review row of each touched request, recomputed from all its votes: exact whatever the
# mix of inserts, rating changes and deletions in the statement.
REVIEWS_REFRESH = """
      WITH touched AS (SELECT DISTINCT request_id FROM ({source}) t)
      , gone AS (
        DELETE FROM feedback_reviews v USING touched
        WHERE v.request_id = touched.request_id
          AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = v.request_id)
      )
      INSERT INTO feedback_reviews AS v (
        request_id, request_created_at, alias, model_id, net, votes, down_comments,
        first_voted_at, last_voted_at, rated_at, comment)
      SELECT f.request_id, r.created_at, r.alias, r.model_id, sum(f.rating), count(*),
             count(*) FILTER (WHERE f.rating = -1 AND coalesce(f.comment, '') <> ''),
             min(f.created_at), max(f.created_at), max(f.updated_at),
             (array_agg(f.comment ORDER BY f.updated_at DESC)
               FILTER (WHERE coalesce(f.comment, '') <> ''))[1]
      FROM feedback f
      JOIN touched USING (request_id)
      JOIN requests r ON r.id = f.request_id
      GROUP BY f.request_id, r.created_at, r.alias, r.model_id
      ON CONFLICT (request_id) DO UPDATE SET
        net = excluded.net, votes = excluded.votes, down_comments = excluded.down_comments,
        first_voted_at = excluded.first_voted_at,
        last_voted_at = excluded.last_voted_at, rated_at = excluded.rated_at,
        comment = excluded.comment;
"""

TOUCHED_NEW = "SELECT request_id FROM new_rows"
TOUCHED_OLD = "SELECT request_id FROM old_rows"

REVIEWS_FUNCTION = f"""
    CREATE FUNCTION herd_feedback_reviews() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'INSERT' THEN
        {REVIEWS_REFRESH.format(source=TOUCHED_NEW)}
      ELSIF TG_OP = 'UPDATE' THEN
        {REVIEWS_REFRESH.format(source=TOUCHED_NEW + " UNION ALL " + TOUCHED_OLD)}
      ELSE
        {REVIEWS_REFRESH.format(source=TOUCHED_OLD)}
      END IF;
      RETURN NULL;
    END
    $$
"""


def _triggers(table: str, function: str) -> list[str]:
    """One statement-level trigger per event (transition tables allow no more per trigger)."""
    tables = {
        "INSERT": "NEW TABLE AS new_rows",
        "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "DELETE": "OLD TABLE AS old_rows",
    }
    return [
        f"""
        CREATE TRIGGER {function}_{event.lower()} AFTER {event} ON {table}
        REFERENCING {transition}
        FOR EACH STATEMENT EXECUTE FUNCTION {function}()
        """
        for event, transition in tables.items()
    ]


def _counter(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "sessions_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        _counter("sessions"),
        _counter("turns"),
        _counter("regenerates"),
        _counter("one_turn"),
        sa.PrimaryKeyConstraint("hour", "alias", "model_id", name=op.f("pk_sessions_hourly")),
    )
    op.create_index("ix_request_sessions_last_at", "request_sessions", ["last_at"])
    op.create_table(
        "feedback_reviews",
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("request_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alias", sa.Text(), nullable=True),
        sa.Column("model_id", sa.BigInteger(), nullable=True),
        sa.Column("net", sa.Integer(), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("down_comments", sa.Integer(), nullable=False),
        sa.Column("first_voted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_voted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_feedback_reviews_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_feedback_reviews")),
    )
    op.create_index(
        "ix_feedback_reviews_rated_at",
        "feedback_reviews",
        [sa.text("rated_at DESC"), "request_id"],
    )
    # Requests with votes on both sides of a review window's edge: few, and found by this.
    op.create_index(
        "ix_feedback_reviews_multi_vote",
        "feedback_reviews",
        ["first_voted_at", "last_voted_at"],
        postgresql_where=sa.text("votes > 1"),
    )
    # A version's thumbs-down comments: its rated requests that have one, by last vote.
    op.create_index(
        "ix_feedback_reviews_down_comments",
        "feedback_reviews",
        ["model_id", "last_voted_at"],
        postgresql_where=sa.text("down_comments > 0"),
    )
    for statement in [
        SESSIONS_FUNCTION,
        *_triggers("request_sessions", "herd_sessions_rollup"),
        REVIEWS_FUNCTION,
        *_triggers("feedback", "herd_feedback_reviews"),
    ]:
        op.execute(statement)
    # Rows written before this revision get their rollups now.
    op.execute(SESSIONS_DELTA.format(source=SIGNED_NEW.replace("new_rows", "request_sessions")))
    op.execute(REVIEWS_REFRESH.format(source="SELECT request_id FROM feedback"))


def downgrade() -> None:
    for table, function in (
        ("feedback", "herd_feedback_reviews"),
        ("request_sessions", "herd_sessions_rollup"),
    ):
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER {function}_{event} ON {table}")
        op.execute(f"DROP FUNCTION {function}()")
    op.drop_index("ix_feedback_reviews_down_comments", table_name="feedback_reviews")
    op.drop_index("ix_feedback_reviews_multi_vote", table_name="feedback_reviews")
    op.drop_index("ix_feedback_reviews_rated_at", table_name="feedback_reviews")
    op.drop_table("feedback_reviews")
    op.drop_index("ix_request_sessions_last_at", table_name="request_sessions")
    op.drop_table("sessions_hourly")
