"""Bodies of the gateway's own endpoints (feedback, batches), for OpenAPI.

The completion bodies and the error shape are the OpenAI surface's (app/openai_api/schemas.py,
app/openai_api/errors.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.batches.jsonl import ENDPOINTS
from app.openai_api.text import Text


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: Text = Field(
        min_length=1, max_length=256, description="The `id` of a completion response."
    )
    rating: Literal[1, -1] = Field(description="1: thumbs up, -1: thumbs down.")
    comment: Text | None = Field(default=None, max_length=10_000)
    user: Text | None = Field(
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


class BatchCreateRequest(BaseModel):
    """POST /v1/batches, as OpenAI's API takes it; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: Text = Field(
        min_length=1, max_length=64, description="An uploaded file with purpose `batch`."
    )
    endpoint: Text = Field(
        max_length=64,
        description="What every line calls.",
        json_schema_extra={"enum": list(ENDPOINTS)},
    )
    completion_window: Text = Field(default="24h", max_length=16, description="Only 24h.")
    metadata: (
        Annotated[
            dict[Annotated[Text, Field(max_length=64)], Annotated[Text, Field(max_length=512)]],
            Field(max_length=16),
        ]
        | None
    ) = Field(default=None, description="Up to 16 string pairs, kept with the batch.")
