"""Operators' own reference answers, from the feedback Herd stores: answers users rated
thumbs-up (net rating above 0) and answers operators corrected in Feedback review, of real
user turns only (app/analytics/eligible.py: no batch line, demo traffic, cancelled, failed
or cut answer)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import text

from app.analytics.eligible import ELIGIBLE, Eligibility
from app.analytics.export import prompt_messages
from app.db.bind import Bind, connect

_REFERENCES = text(f"""
    SELECT source, prompt, answer FROM (
      SELECT 'thumbs_up' AS source, msg.prompt, msg.response AS answer, r.created_at
      FROM (SELECT request_id, sum(rating) AS net FROM feedback GROUP BY request_id) f
      JOIN requests r ON r.id = f.request_id
      JOIN messages msg ON msg.request_id = r.id
      WHERE f.net > 0 AND {ELIGIBLE} AND coalesce(msg.response, '') <> ''
      UNION ALL
      SELECT 'correction', msg.prompt, c.response, c.updated_at
      FROM feedback_corrections c
      JOIN requests r ON r.id = c.request_id
      JOIN messages msg ON msg.request_id = r.id
      WHERE {ELIGIBLE} AND c.response <> ''
    ) refs
    ORDER BY created_at DESC
    LIMIT :limit
""")


@dataclass(frozen=True)
class Reference:
    """A prompt (chat messages) and the answer taken as right for it."""

    source: str
    messages: list[dict[str, str]]
    answer: str


def reference_set(bind: Bind, limit: int = 200) -> list[Reference]:
    """The newest references, at most limit; prompts that are not chat messages are skipped."""
    with connect(bind) as conn:
        rows = conn.execute(_REFERENCES, {"limit": limit, **Eligibility().params()}).all()
    out = []
    for source, prompt, answer in rows:
        messages = prompt_messages(prompt)
        if messages is not None:
            out.append(Reference(str(source), messages, str(answer)))
    return out


def digest(references: list[Reference]) -> str:
    """A sha256 naming the exact reference set a measurement used."""
    data = [[r.source, r.messages, r.answer] for r in references]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
