"""What a generation streams back: text deltas, then one Finished with usage and timings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens whose KV cache was reused from an earlier request, not computed again.
    cached_tokens: int = 0
    # Prompt-lookup drafts (lookup_drafts.py): draft tokens decoded, and those the sampler
    # confirmed; the rest were computed and thrown away. Both 0 when the request did not draft.
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, Any]:
        # OpenAI's shape: cached prompt tokens sit under prompt_tokens_details.
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            # OpenAI's names for predicted outputs; here the drafts taken from the prompt.
            "completion_tokens_details": {
                "accepted_prediction_tokens": self.accepted_tokens,
                "rejected_prediction_tokens": self.drafted_tokens - self.accepted_tokens,
            },
        }


@dataclass(frozen=True)
class Timings:
    """Where the time went, in milliseconds from the moment the engine accepted the request.

    ttft_ms includes queue_ms: it is what the caller waited for the first token.
    tokens_per_second is the decode rate after the first token.
    """

    queue_ms: float
    ttft_ms: float | None
    prompt_ms: float | None
    total_ms: float
    tokens_per_second: float
    # Mean time between output tokens after the first; None below two tokens.
    time_per_output_token_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token's log probability, with the most likely alternatives (sorted)."""

    piece: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """New completion text; may span several tokens or none (held back for stop strings).

    tokens: the tokens sampled since the previous delta, when log probabilities were asked.
    """

    text: str
    tokens: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The last event of every generation."""

    finish_reason: FinishReason
    usage: Usage
    timings: Timings


GenerationEvent = TextDelta | Finished
