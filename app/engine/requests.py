"""What a caller asks the engine for: a chat or a raw prompt, and how to sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant", "tool", "developer"]


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn, with its content already flattened to text."""

    role: Role
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, named as in the OpenAI API; temperature 0 means greedy."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    # llama-cpp-python's defaults for the sampler steps the OpenAI API does not name.
    min_p: float = 0.05
    # 1.0 turns the repeat penalty off; it looks back over the last repeat_last_n tokens.
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    # None: generate until the end of sequence or the end of the context window.
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Keep generating past end-of-sequence tokens (benchmarks, tests); llama-server's name.
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """Either messages (formatted with the model's own chat template) or a raw prompt."""

    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a generation request has either messages or a prompt")
