"""Herd's own request headers, shared by the gateway (which sends them) and the worker."""

from __future__ import annotations

# The priority class a call runs in on a worker (app/worker/priority.py reads it); the
# gateway sends it with every line of a batch.
PRIORITY_HEADER = "X-Herd-Priority"
