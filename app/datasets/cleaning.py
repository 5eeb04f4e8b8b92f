"""The cleaning pipeline: each step drops (or, for redaction, rewrites) rows and reports how
many, in the order they run."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from app.analytics.redact import redact_text
from app.datasets.language import UNKNOWN, detect_language
from app.datasets.near_dup import near_duplicates
from app.datasets.rows import DatasetError, DatasetRow

# (step name, done, total): long steps call it as they go.
StepProgress = Callable[[str, int, int], None]

# Openings of answers that decline instead of answering. Matched against the start of the
# answer (lower-cased, curly quotes made straight), where refusals put them.
REFUSAL = re.compile(
    r"^\W*(?:"
    r"i(?:'m| am) (?:sorry|afraid)[^.!?]{0,40}\b(?:can(?:no|')t|unable|not able|won't)"
    r"|i (?:can(?:no|')t|won't|will not|am unable to|'m unable to|am not able to) "
    r"(?:help|assist|provide|do|comply|answer|fulfil|fulfill|create|write|generate)"
    r"|sorry, (?:but )?i (?:can(?:no|')t|won't)"
    r"|as an ai(?: language model)?\b"
    r"|i apologi[sz]e, but i"
    r")"
)


def is_refusal(answer: str) -> bool:
    """Whether the answer opens by declining (see REFUSAL)."""
    return bool(REFUSAL.match(answer[:300].lower().replace("\u2019", "'")))


@dataclass(frozen=True)
class CleaningOptions:
    """Which steps run and their limits (characters, not tokens: no tokenizer needed)."""

    drop_empty_answers: bool = True
    drop_refusals: bool = True
    min_prompt_chars: int = 1
    max_prompt_chars: int = 16_000
    min_answer_chars: int = 1
    max_answer_chars: int = 32_000
    languages: tuple[str, ...] = ()  # empty: no language filter
    keep_unknown_language: bool = True
    redact: bool = True
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = 0.8

    def __post_init__(self) -> None:
        if not 0 < self.near_dup_threshold <= 1:
            raise DatasetError("--near-dup-threshold is a similarity in (0, 1]")
        if self.min_prompt_chars > self.max_prompt_chars:
            raise DatasetError("the least prompt length is above the greatest")
        if self.min_answer_chars > self.max_answer_chars:
            raise DatasetError("the least answer length is above the greatest")

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["languages"] = list(self.languages)
        return out


@dataclass
class StepReport:
    """What one step did: rows in, rows removed, rows rewritten (redaction)."""

    step: str
    description: str
    rows_in: int
    removed: int = 0
    changed: int = 0

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.removed

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_out": self.rows_out}


@dataclass
class CleaningResult:
    rows: list[DatasetRow]
    steps: list[StepReport] = field(default_factory=list)


def _digest(row: DatasetRow) -> str:
    body = json.dumps([row.prompt, row.response], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def _redact(row: DatasetRow) -> DatasetRow:
    prompt = tuple({**m, "content": redact_text(m["content"])} for m in row.prompt)
    response = redact_text(row.response) if row.response is not None else None
    return replace(row, prompt=prompt, response=response)


class _Pipeline:
    def __init__(self, rows: list[DatasetRow], progress: StepProgress | None) -> None:
        self.rows = rows
        self.steps: list[StepReport] = []
        self.progress = progress

    def drop(self, step: str, description: str, dropped: Callable[[DatasetRow], bool]) -> None:
        kept = [row for row in self.rows if not dropped(row)]
        self.steps.append(StepReport(step, description, len(self.rows), len(self.rows) - len(kept)))
        self.rows = kept
        if self.progress is not None:
            self.progress(step, len(kept), len(kept))


def clean(
    rows: list[DatasetRow],
    options: CleaningOptions,
    answers: bool,
    progress: StepProgress | None = None,
    prompts: bool = True,
) -> CleaningResult:
    """Run the enabled steps over rows in a fixed order. answers=False skips the answer
    steps (prompt-only rows, before a teacher answers them); prompts=False skips the prompt
    steps (a teacher's answers to prompts cleaned before)."""
    o = options
    p = _Pipeline(rows, progress)
    if answers and o.drop_empty_answers:
        p.drop(
            "empty_answer",
            "no answer, or only whitespace",
            lambda r: not (r.response or "").strip(),
        )
    if answers and o.drop_refusals:
        p.drop(
            "refusal",
            "answer opens by declining (\"I'm sorry, but I can't ...\")",
            lambda r: is_refusal(r.response or ""),
        )
    if answers:
        p.drop(
            "answer_length",
            f"answer outside {o.min_answer_chars}..{o.max_answer_chars} characters",
            lambda r: (
                not o.min_answer_chars <= len((r.response or "").strip()) <= o.max_answer_chars
            ),
        )
    if prompts:
        _prompt_steps(p, o)
    elif o.redact:
        _redact_step(p, "pii_redaction_answers")
    return CleaningResult(p.rows, p.steps)


def _redact_step(p: _Pipeline, step: str = "pii_redaction") -> None:
    before = p.rows
    p.rows = [_redact(r) for r in before]
    changed = sum(a != b for a, b in zip(before, p.rows, strict=True))
    description = "emails, phone and card numbers replaced by [EMAIL], [PHONE], [CARD]"
    p.steps.append(StepReport(step, description, len(before), 0, changed))


def _prompt_steps(p: _Pipeline, o: CleaningOptions) -> None:
    p.drop(
        "prompt_length",
        f"prompt outside {o.min_prompt_chars}..{o.max_prompt_chars} characters",
        lambda r: not o.min_prompt_chars <= len(r.prompt_text().strip()) <= o.max_prompt_chars,
    )
    if o.languages:
        allowed = set(o.languages) | ({UNKNOWN} if o.keep_unknown_language else set())
        p.drop(
            "language",
            f"prompt not in {', '.join(o.languages)}"
            + (" (too short to tell: kept)" if o.keep_unknown_language else ""),
            lambda r: detect_language(r.last_user_text() or r.prompt_text()) not in allowed,
        )
    if o.redact:
        _redact_step(p)
    if o.exact_dedup:
        seen: set[str] = set()

        def repeated(row: DatasetRow) -> bool:
            digest = _digest(row)
            if digest in seen:
                return True
            seen.add(digest)
            return False

        p.drop("exact_duplicate", "same prompt and answer as an earlier row", repeated)
    if o.near_dedup:
        texts = [r.prompt_text() for r in p.rows]

        def near_progress(done: int, total: int) -> None:
            if p.progress is not None:
                p.progress("near_duplicate", done, total)

        mask = near_duplicates(texts, o.near_dup_threshold, progress=near_progress)
        flagged = {id(r) for r, m in zip(p.rows, mask, strict=True) if m}
        p.drop(
            "near_duplicate",
            f"prompt >= {o.near_dup_threshold:g} similar (MinHash, word 3-grams) to an "
            "earlier row's",
            lambda r: id(r) in flagged,
        )
