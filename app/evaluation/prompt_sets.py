"""Prompt sets an evaluation scores and answers: the feedback-derived set (thumbs-up and
corrected answers as references) or an operator's JSONL file of {prompt, reference}."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from app.analytics.export import prompt_messages
from app.db.bind import Bind
from app.evaluation.references import Reference, digest, reference_set
from app.openai_api.text import bad_text_at

FEEDBACK = "feedback"
MAX_FILE_BYTES = 64 * 1024 * 1024
# A file with many bad lines is reported by its first few, not by all of them.
MAX_ERRORS_SHOWN = 5


class PromptSetError(ValueError):
    """A prompt set that cannot be used (unreadable, malformed lines, empty)."""


@dataclass(frozen=True)
class PromptSet:
    """The references an evaluation uses, named as its rows record them."""

    name: str
    references: list[Reference]

    @property
    def sha256(self) -> str:
        return digest(self.references)


def read_prompt_file(path: Path) -> list[Reference]:
    """The {prompt, reference} objects of a JSONL file, one a line (blank lines skipped).
    `prompt` is a string (one user message) or a list of {role, content} chat messages;
    `reference` the answer taken as right. Every bad line is an error naming its number."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PromptSetError(f"{path} is {size} bytes; the limit is 64 MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise PromptSetError(f"cannot read the prompt file {path}: {exc}") from exc
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"{path} is not UTF-8 text: {exc}") from exc
    out: list[Reference] = []
    errors: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            errors.append(f"line {number}: not JSON (nested too deep)")
            continue
        # A NUL or a lone surrogate would fail the evaluation when its answers are stored.
        bad = bad_text_at(entry)
        if bad is not None:
            errors.append(f"line {number}: {bad}")
            continue
        try:
            out.append(_reference(entry))
        except PromptSetError as exc:
            errors.append(f"line {number}: {exc}")
    if errors:
        more = len(errors) - MAX_ERRORS_SHOWN
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise PromptSetError(f"{path}: {len(errors)} bad line(s): {shown}")
    if not out:
        raise PromptSetError(f"{path} holds no prompts (one {{prompt, reference}} object a line)")
    return out


def _reference(entry: object) -> Reference:
    if not isinstance(entry, dict):
        raise PromptSetError("expected an object with 'prompt' and 'reference'")
    unknown = sorted(set(entry) - {"prompt", "reference"})
    if unknown:
        raise PromptSetError(f"unknown field(s) {unknown}; expected 'prompt' and 'reference'")
    messages = prompt_messages(entry.get("prompt"))
    if messages is None:
        raise PromptSetError(
            "'prompt' must be a non-empty string or a list of {role, content} messages"
        )
    reference = entry.get("reference")
    if not isinstance(reference, str) or not reference.strip():
        raise PromptSetError("'reference' must be a non-empty string")
    return Reference("file", messages, reference)


def load_prompt_set(bind: Bind, choice: str | None, limit: int) -> PromptSet:
    """The prompt set named by choice: None (the feedback set, which may still be empty on a
    new install), 'feedback' (the same, but refused when empty), or a JSONL file's path.
    At most limit references (the newest feedback, or the file's first lines)."""
    if choice is None or choice == FEEDBACK:
        references = reference_set(bind, limit)
        if choice == FEEDBACK and not references:
            raise PromptSetError(
                "the feedback prompt set is empty: no thumbs-up or corrected answers yet "
                "(rate answers on the Chat page or correct them in Feedback review, or give "
                "a JSONL file of {prompt, reference})"
            )
        return PromptSet(FEEDBACK, references)
    path = Path(choice)
    return PromptSet(path.name, read_prompt_file(path)[:limit])
