"""Bodies of the gateway's own endpoints (feedback) and the error shape, for OpenAPI.

The completion bodies are the OpenAI surface's (app/openai_api/schemas.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the API answers with, in OpenAI's shape."""

    error: ErrorDetail


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
