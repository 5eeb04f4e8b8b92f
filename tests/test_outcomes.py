"""The gateway's in-process outcome of a call (Prometheus labels) is the database's
(herd_is_error / herd_is_client_error, which the rollups and the metric catalog count)."""

from __future__ import annotations

from sqlalchemy import text

from app.analytics.outcomes import STATUSES, Outcome, outcome
from app.db.database import Database

HTTP_STATUSES = (None, 200, 299, 399, 400, 404, 429, 499, 500, 502, 503, 504)


def test_outcome_agrees_with_the_sql_definition(database: Database) -> None:
    sql = text(
        "SELECT herd_is_error(CAST(:s AS text), CAST(:h AS smallint)) AS server, "
        "herd_is_client_error(CAST(:s AS text), CAST(:h AS smallint)) AS client"
    )
    with database.engine.connect() as conn:
        for status in STATUSES:
            for http_status in HTTP_STATUSES:
                row = conn.execute(sql, {"s": status, "h": http_status}).one()
                got = outcome(status, http_status)
                assert (got is Outcome.SERVER_ERROR) == row.server, (status, http_status)
                assert (got is Outcome.CLIENT_ERROR) == row.client, (status, http_status)
                if not (row.server or row.client):
                    want = Outcome.CANCELLED if status == "cancelled" else Outcome.OK
                    assert got is want, (status, http_status)
