"""Request bodies the gateway accepts: validated (422 otherwise) and described in OpenAPI.

Fields the gateway does not need pass through to the worker untouched (extra="allow").
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# llama.cpp counts tokens in C ints: a larger max_tokens can only be a mistake.
INT32_MAX = 2**31 - 1


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None


class CompletionParams(BaseModel):
    """What chat and text completions share; names and ranges as in the OpenAI API."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="An alias from GET /v1/models.")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="Only 1 is supported.")
    user: str | None = Field(
        default=None, description="End-user id; also the session for worker affinity."
    )


class ChatCompletionRequest(CompletionParams):
    messages: list[ChatMessageIn] = Field(min_length=1)


class CompletionRequest(CompletionParams):
    prompt: str | list[str]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1, description="The `id` of a completion response.")
    rating: Literal[1, -1] = Field(description="1: thumbs up, -1: thumbs down.")
    comment: str | None = Field(default=None, max_length=10_000)
    user: str | None = Field(
        default=None, max_length=256, description="Who votes; one vote per response and user."
    )


class FeedbackResponse(BaseModel):
    id: int
    response_id: str
    rating: int
    comment: str | None
    user: str | None
    created_at: str
    updated_at: str
