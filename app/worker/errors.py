"""Engine errors as the OpenAI surface's ApiError, with the matching HTTP status.

Handlers come from app/openai_api/errors.py, shared with the gateway. A generation that fails
inside llama.cpp is reported without llama.cpp's text (it is logged): clients get the kind.
"""

from __future__ import annotations

from app.engine.errors import (
    BadRequest,
    EngineClosed,
    EngineError,
    GenerationFailed,
    PromptTooLong,
    QueueFull,
)
from app.openai_api.errors import ApiError, invalid_value, unavailable


def from_engine_error(exc: EngineError, prompt_param: str | None = None) -> ApiError:
    """The answer to exc; prompt_param names the field holding the prompt (messages, prompt)."""
    if isinstance(exc, QueueFull):
        return ApiError(
            429, str(exc), "rate_limit_error", "queue_full", retry_after_s=exc.retry_after_s
        )
    if isinstance(exc, PromptTooLong):
        return ApiError(400, str(exc), code="context_length_exceeded", param=prompt_param)
    if isinstance(exc, BadRequest):
        return invalid_value(str(exc), exc.param or prompt_param)
    if isinstance(exc, EngineClosed):
        return unavailable(str(exc), "shutting_down")
    if isinstance(exc, GenerationFailed):
        return ApiError(500, str(exc), "server_error", "generation_failed")
    return ApiError(500, "the engine failed; details are in the worker's log", "server_error")
