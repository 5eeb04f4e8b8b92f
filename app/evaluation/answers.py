"""The `evaluation_answers` table: the only code that writes it, and the side-by-side view
the Evaluation page reads (per prompt: the reference, then each model's greedy answer)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert, text

from app.db.tables import EvaluationAnswer
from app.evaluation.references import Reference

# The newest answer of each model to each prompt of a set.
_LATEST = text("""
    SELECT DISTINCT ON (a.prompt_key, a.model_id)
           a.prompt_key, a.position, a.source, a.prompt, a.reference, a.answer,
           a.answer_tokens, a.max_tokens, a.created_at, a.job_id, m.name AS model
    FROM evaluation_answers a JOIN models m ON m.id = a.model_id
    WHERE a.prompt_set = :prompt_set
    ORDER BY a.prompt_key, a.model_id, a.created_at DESC, a.id DESC
""")

_SETS = text("""
    SELECT prompt_set, max(created_at) AS newest FROM evaluation_answers
    GROUP BY prompt_set ORDER BY newest DESC
""")


def prompt_key(reference: Reference) -> str:
    """Names one prompt and its reference across models and runs."""
    data = [reference.messages, reference.answer]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The prompt as a reader wants it: the last user message, with earlier turns counted."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    last = users[-1] if users else messages[-1]["content"]
    earlier = len(messages) - 1
    return last if earlier == 0 else f"{last}\n(after {earlier} earlier message(s))"


@dataclass(frozen=True)
class GeneratedAnswer:
    """What one model answered greedily to one reference's prompt."""

    reference: Reference
    position: int
    answer: str
    answer_tokens: int


@dataclass
class SideBySide:
    """One prompt, its reference answer, and each model's newest answer to it."""

    prompt: list[dict[str, str]]
    reference: str
    source: str
    position: int
    answers: dict[str, str] = field(default_factory=dict)
    newest: Any = None


class AnswerStore:
    """Record models' greedy answers; read them back side by side per prompt."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        model_id: int,
        prompt_set: str,
        answers: list[GeneratedAnswer],
        max_tokens: int,
        job_id: int | None = None,
    ) -> None:
        rows = [
            {"model_id": model_id, "job_id": job_id, "prompt_set": prompt_set,
             "prompt_key": prompt_key(a.reference), "position": a.position,
             "source": a.reference.source, "prompt": a.reference.messages,
             "reference": a.reference.answer, "answer": a.answer,
             "answer_tokens": a.answer_tokens, "max_tokens": max_tokens}
            for a in answers
        ]  # fmt: skip
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(EvaluationAnswer), rows)

    def prompt_sets(self) -> list[str]:
        """The sets answers were generated for, the most recently used first."""
        with self.engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(_SETS)]

    def side_by_side(
        self, prompt_set: str, models: list[str] | None = None, limit: int = 20
    ) -> list[SideBySide]:
        """Per prompt of the set (the most recently answered first, at most limit): the
        reference and the newest answer of each model (of those named, when named)."""
        with self.engine.connect() as conn:
            rows = conn.execute(_LATEST, {"prompt_set": prompt_set}).mappings().all()
        by_key: dict[str, SideBySide] = {}
        for row in rows:
            if models is not None and row["model"] not in models:
                continue
            entry = by_key.setdefault(
                row["prompt_key"],
                SideBySide(row["prompt"], row["reference"], row["source"], row["position"]),
            )
            entry.answers[row["model"]] = row["answer"]
            if entry.newest is None or row["created_at"] > entry.newest:
                entry.newest = row["created_at"]
        # Newest run first; within a run, the set's own order.
        ordered = sorted(by_key.values(), key=lambda e: e.position)
        ordered.sort(key=lambda e: e.newest, reverse=True)
        return ordered[:limit]
