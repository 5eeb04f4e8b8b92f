"""What the engine refuses or fails with; the worker maps each to an HTTP status."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ModelLoadError(EngineError):
    """llama.cpp would not load the model; the message is llama.cpp's own reason."""


class BadRequest(EngineError):
    """The request cannot be served as given (empty prompt, template refused the messages);
    param names the request field at fault, when one is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLong(BadRequest):
    """The prompt (plus max_tokens, when asked for) does not fit the context window."""

    def __init__(self, prompt_tokens: int, n_ctx: int, max_tokens: int | None = None) -> None:
        if max_tokens is None:
            message = (
                f"the prompt is {prompt_tokens} tokens, but this worker's context window is "
                f"{n_ctx} tokens and at least one token must be left for the completion"
            )
        else:
            message = (
                f"the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}, but "
                f"this worker's context window is {n_ctx} tokens per request; shorten the "
                "prompt or lower max_tokens"
            )
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens


class QueueFull(EngineError):
    """Every slot is busy and the waiting queue is full; try again after retry_after_s."""

    def __init__(self, queue_length: int, retry_after_s: int) -> None:
        super().__init__(
            f"all slots are busy and {queue_length} requests are already waiting; "
            f"retry in {retry_after_s} s"
        )
        self.queue_length = queue_length
        self.retry_after_s = retry_after_s


class EngineClosed(EngineError):
    """The engine is shutting down and takes no new requests."""


class GenerationFailed(EngineError):
    """llama.cpp failed in the middle of a generation."""
