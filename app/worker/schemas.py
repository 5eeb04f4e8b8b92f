"""Request bodies of the OpenAI-compatible endpoints, validated by pydantic.

Unknown fields are ignored (clients send many); known fields are checked, so a wrong type
or a negative max_tokens is a 400 with the field's name, never a 500.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.engine.requests import ChatMessage, GenerationRequest, Role, SamplingParams

MAX_STOP_STRINGS = 16
INT32_MAX = 2**31 - 1


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[ContentPart] | None = None

    def flat(self) -> ChatMessage:
        """The message with its content as plain text; only text parts are understood."""
        if self.content is None or isinstance(self.content, str):
            return ChatMessage(self.role, self.content or "")
        texts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content parts of type {part.type!r} are not supported")
            texts.append(part.text)
        return ChatMessage(self.role, "".join(texts))


class SamplingBody(BaseModel):
    """Fields shared by chat and text completions. None means the default."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    # Bounded so that no value reaches llama.cpp's C ints and fails there (a 500).
    top_k: int | None = Field(default=None, ge=0, le=INT32_MAX)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stream: bool | None = None
    n: Literal[1] | None = None
    ignore_eos: bool | None = None

    def sampling(self, max_tokens: int | None = None) -> SamplingParams:
        defaults = SamplingParams()
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop: at most {MAX_STOP_STRINGS} stop strings")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            max_tokens=max_tokens if max_tokens is not None else self.max_tokens,
            stop=stop,
            seed=self.seed,
            ignore_eos=bool(self.ignore_eos),
        )


class ChatCompletionBody(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    # The newer OpenAI name for max_tokens; wins when both are given.
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)

    def generation_request(self) -> GenerationRequest:
        return GenerationRequest(
            messages=tuple(m.flat() for m in self.messages),
            sampling=self.sampling(self.max_completion_tokens),
        )


class CompletionBody(SamplingBody):
    prompt: str | list[str]

    def generation_request(self) -> GenerationRequest:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ValueError("prompt: one prompt per request (a list of exactly one string)")
            prompt = self.prompt[0]
        else:
            prompt = self.prompt
        return GenerationRequest(prompt=prompt, sampling=self.sampling())
