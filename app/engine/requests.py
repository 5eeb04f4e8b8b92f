"""What a caller asks the engine for: a chat or a raw prompt, and how to sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant", "tool", "developer"]
# Who waits for the answer: a person (interactive, the default) or an offline batch, which runs
# in slots live traffic does not need and yields them when it does (see admission.py).
Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn, with its content already flattened to text.

    An assistant turn may hold the tool calls it made (tool_calls: their JSON list, as OpenAI
    writes them); a tool turn answers the call tool_call_id.
    """

    role: Role
    content: str
    tool_calls: str | None = None
    tool_call_id: str | None = None
    name: str | None = None


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
    # OpenAI's penalties, over the tokens generated so far (0 turns each off).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # (token id, bias added to its logit); -100 bans a token, as in the OpenAI API.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # None: no log probabilities; k >= 0: each token's, with its k likeliest alternatives.
    logprobs: int | None = None
    # Prompt-lookup drafts (engine/drafting.py): a speed-up only, the output is the same.
    draft: bool = True


@dataclass(frozen=True)
class OutputConstraint:
    """What the output must match: a GBNF grammar, a JSON schema, any JSON object, or a
    call of one of the tools (tool_call_gbnf).

    source is the grammar's text, the schema as JSON, or {"tools": [...], "parallel": bool};
    param names the request field it came from, for the 400 when it cannot be used.
    """

    kind: Literal["grammar", "json_schema", "json_object", "tool_call"]
    source: str
    param: str


@dataclass(frozen=True)
class GenerationRequest:
    """Either messages (formatted with the model's own chat template) or a raw prompt."""

    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    constraint: OutputConstraint | None = None
    # The tools the chat template presents to the model: a JSON list of OpenAI tool objects.
    tools: str | None = None
    priority: Priority = "interactive"

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a generation request has either messages or a prompt")
