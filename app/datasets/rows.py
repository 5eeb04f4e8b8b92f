"""One example of a dataset: a prompt (chat messages), its answer, where it came from."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class DatasetKind(StrEnum):
    """What a dataset holds: logged/uploaded answers, a teacher's answers, or paraphrases."""

    SFT = "sft"
    DISTILL = "distill"
    AUGMENT = "augment"


class DatasetError(ValueError):
    """A dataset that cannot be built as asked; nothing was written."""


@dataclass(frozen=True)
class DatasetRow:
    """A prompt (messages before the answer) and its answer (None: a prompt only).

    session groups the turns of one conversation: a split never separates them. parent_id
    names the row a synthetic (augmented) row was made from.
    """

    id: str
    session: str
    prompt: tuple[dict[str, str], ...]
    response: str | None = None
    source: str = "request_log"
    synthetic: bool = False
    parent_id: str = ""

    def prompt_text(self) -> str:
        """The prompt's messages' text, one per line: what dedup and filters read."""
        return "\n".join(m["content"] for m in self.prompt)

    def last_user_text(self) -> str:
        for message in reversed(self.prompt):
            if message["role"] == "user":
                return message["content"]
        return ""

    def with_response(self, response: str | None) -> DatasetRow:
        return replace(self, response=response)

    def record(self) -> dict[str, Any]:
        """The JSONL line: chat messages ending with the answer (if any) and provenance.

        Every line has the same keys and types, so `datasets` infers one schema per split.
        """
        messages = [dict(m) for m in self.prompt]
        if self.response is not None:
            messages.append({"role": "assistant", "content": self.response})
        return {
            "messages": messages,
            "id": self.id,
            "session_id": self.session,
            "source": self.source,
            "synthetic": self.synthetic,
            "parent_id": self.parent_id,
        }
