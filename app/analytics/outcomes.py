"""How a call ended, as every number counts it: a server error (5xx, or a failure with no
HTTP status, such as a stream cut off), a client error (4xx other than a client that hung
up), cancelled, or ok.

The SQL functions `herd_is_error` and `herd_is_client_error` (revision 0013) are the
definition the rollups and the metric catalog use; `outcome` is their twin for counters
kept in a process (the gateway's Prometheus metrics). tests/test_outcomes.py holds the two
to the same answer for every status the request log writes.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    CANCELLED = "cancelled"


# The statuses the request log writes (app/gateway/request_log.py RequestRecord.status).
STATUSES = ("ok", "error", "rejected", "cancelled")


def outcome(status: str, http_status: int | None) -> Outcome:
    """The outcome of a call logged with status and http_status."""
    if http_status is not None and http_status >= 500:
        return Outcome.SERVER_ERROR
    if http_status is None and status in ("error", "rejected"):
        return Outcome.SERVER_ERROR
    if status != "cancelled" and http_status is not None and 400 <= http_status <= 499:
        return Outcome.CLIENT_ERROR
    if status == "cancelled":
        return Outcome.CANCELLED
    return Outcome.OK
