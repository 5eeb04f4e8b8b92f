"""Turning dataset rows into batch request bodies, and batch results back into rows:
distillation (a teacher alias answers the prompts) and augmentation (an alias paraphrases
them). Pure functions; run.py sends the bodies as a batch through the Batch API."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np

from app.analytics.eligible import CUT
from app.datasets.cleaning import StepReport
from app.datasets.near_dup import near_duplicates
from app.datasets.rows import DatasetError, DatasetRow


class LineResult(Protocol):
    """What a batch line produced (app.batches.service.BatchResult has this shape)."""

    @property
    def ok(self) -> bool: ...

    @property
    def text(self) -> str | None: ...

    @property
    def finish_reason(self) -> str | None: ...


@dataclass(frozen=True)
class GenerationSettings:
    """The sampling settings sent with every line (recorded on the card)."""

    alias: str
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str | None = None
    # Keep answers that stopped at max_tokens (finish_reason 'length'); by default they are
    # dropped and counted, as cut answers in the request log are.
    keep_cut: bool = False

    def __post_init__(self) -> None:
        if not self.alias:
            raise DatasetError("name the alias that answers (--teacher / --alias)")
        if self.max_tokens < 1:
            raise DatasetError("max_tokens must be at least 1")
        if not 0 <= self.temperature <= 2:
            raise DatasetError("temperature must be between 0 and 2")

    def body(self, messages: list[dict[str, str]], seed: int | None = None) -> dict[str, Any]:
        return {
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed if seed is None else seed,
        }

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def cut(self, result: LineResult) -> bool:
        """Whether result is an answer to drop as cut at max_tokens."""
        return not self.keep_cut and result.finish_reason == CUT


# --- distillation ----------------------------------------------------------------------


def distill_requests(
    rows: list[DatasetRow], teacher: GenerationSettings
) -> tuple[list[str], list[dict[str, Any]]]:
    """One chat-completion body per row (its prompt, the teacher's system prompt first if
    set), keyed r0, r1, ... by position."""
    ids, bodies = [], []
    for index, row in enumerate(rows):
        messages = [dict(m) for m in row.prompt]
        if teacher.system_prompt:
            messages = [
                {"role": "system", "content": teacher.system_prompt},
                *[m for m in messages if m["role"] != "system"],
            ]
        ids.append(f"r{index}")
        bodies.append(teacher.body(messages))
    return ids, bodies


def distilled_rows(
    rows: list[DatasetRow], results: Mapping[str, LineResult], teacher: GenerationSettings
) -> tuple[list[DatasetRow], list[StepReport]]:
    """Each row with the teacher's answer in place of its own; rows whose line failed, and
    (unless teacher.keep_cut) those whose answer stopped at max_tokens, are dropped and
    counted."""
    answered, out = [], []
    for index, row in enumerate(rows):
        result = results.get(f"r{index}")
        if result is not None and result.ok and result.text is not None:
            answered.append(row)
            if not teacher.cut(result):
                out.append(replace(row, response=result.text, source="distill"))
    steps = [
        StepReport(
            "teacher_failed",
            "the teacher's batch line failed or was cancelled",
            len(rows),
            len(rows) - len(answered),
        )
    ]
    if not teacher.keep_cut:
        steps.append(
            StepReport(
                "teacher_cut",
                f"the teacher's answer stopped at max_tokens ({teacher.max_tokens})",
                len(answered),
                len(answered) - len(out),
            )
        )
    return out, steps


# --- augmentation ----------------------------------------------------------------------

PARAPHRASE_SYSTEM = (
    "Rewrite the user's message so that it asks for exactly the same thing in different "
    "words. Reply with the rewritten message only, without quotes or comments."
)
LEAD_IN = re.compile(
    r"^\s*(?:here(?:'s| is)[^:\n]{0,40}:|paraphrase[^:\n]{0,20}:|rewritten[^:\n]{0,30}:)\s*", re.I
)


def paraphrase_requests(
    rows: list[DatasetRow], n: int, settings: GenerationSettings
) -> tuple[list[str], list[dict[str, Any]]]:
    """n bodies per row asking for a paraphrase of its last user message, each with its own
    seed (so a sampling alias gives n different ones); keyed r<row>-p<k>."""
    if not 1 <= n <= 20:
        raise DatasetError("paraphrases per prompt: 1 to 20")
    system = settings.system_prompt or PARAPHRASE_SYSTEM
    ids, bodies = [], []
    for index, row in enumerate(rows):
        text = row.last_user_text()
        for k in range(n):
            ids.append(f"r{index}-p{k}")
            messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
            bodies.append(settings.body(messages, seed=settings.seed + k))
    return ids, bodies


def clean_paraphrase(text: str) -> str:
    """The paraphrase without a lead-in ("Here is ...:") or wrapping quotes."""
    text = LEAD_IN.sub("", text.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text.strip("“”").strip()


def _with_user_text(row: DatasetRow, text: str) -> tuple[dict[str, str], ...]:
    prompt = list(row.prompt)
    for i in range(len(prompt) - 1, -1, -1):
        if prompt[i]["role"] == "user":
            prompt[i] = {**prompt[i], "content": text}
            break
    return tuple(prompt)


def paraphrased_rows(
    rows: list[DatasetRow],
    results: Mapping[str, LineResult],
    n: int,
    settings: GenerationSettings,
    threshold: float = 0.8,
) -> tuple[list[DatasetRow], list[StepReport]]:
    """The originals followed by their paraphrases, marked synthetic, each in its
    original's conversation (so a split never separates them) with the original's answer.
    Failed or empty lines are counted, and (unless settings.keep_cut) paraphrases that
    stopped at max_tokens; paraphrases equal or near (MinHash, threshold) to an original or
    to an earlier paraphrase are dropped and counted."""
    made: list[DatasetRow] = []
    failed = cut = 0
    for index, row in enumerate(rows):
        for k in range(n):
            result = results.get(f"r{index}-p{k}")
            text = clean_paraphrase(result.text or "") if result is not None and result.ok else ""
            if not text:
                failed += 1
                continue
            if result is not None and settings.cut(result):
                cut += 1
                continue
            made.append(
                replace(
                    row,
                    id=f"{row.id}-p{k}",
                    prompt=_with_user_text(row, text),
                    source="augment",
                    synthetic=True,
                    parent_id=row.id,
                )
            )
    steps = [
        StepReport(
            "paraphrase_failed", "the line failed, or its answer was empty", len(rows) * n, failed
        )
    ]
    if not settings.keep_cut:
        steps.append(
            StepReport(
                "paraphrase_cut",
                f"the paraphrase stopped at max_tokens ({settings.max_tokens})",
                len(rows) * n - failed,
                cut,
            )
        )
    originals = {r.last_user_text().strip().lower() for r in rows}
    exact: set[str] = set(originals)
    unique = []
    for row in made:
        key = row.last_user_text().strip().lower()
        if key not in exact:
            exact.add(key)
            unique.append(row)
    steps.append(
        StepReport(
            "paraphrase_exact_duplicate",
            "same text as an original or an earlier paraphrase (case aside)",
            len(made),
            len(made) - len(unique),
        )
    )
    texts = [r.last_user_text() for r in rows] + [r.last_user_text() for r in unique]
    near = near_duplicates(texts, threshold)[len(rows) :] if unique else np.zeros(0, bool)
    kept = [r for r, drop in zip(unique, near, strict=True) if not drop]
    steps.append(
        StepReport(
            "paraphrase_near_duplicate",
            f">= {threshold:g} similar (MinHash) to an original or an earlier paraphrase",
            len(unique),
            len(unique) - len(kept),
        )
    )
    return [*rows, *kept], steps
