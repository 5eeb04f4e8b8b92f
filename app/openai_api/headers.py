"""Herd's own headers, shared by the side that sends them and the side that reads them."""

from __future__ import annotations

# The priority class a call runs in on a worker (app/worker/priority.py reads it); the
# gateway sends it with every line of a batch.
PRIORITY_HEADER = "X-Herd-Priority"

# A batch line's number, sent by the batch runner with each line (with the batch's id and
# runner credential): the gateway sends a line it has in flight or answered to no worker
# again, and answers with the answer it has, marked by BATCH_REPLAYED_HEADER.
BATCH_LINE_HEADER = "X-Herd-Batch-Line"
BATCH_REPLAYED_HEADER = "X-Herd-Batch-Replayed"
