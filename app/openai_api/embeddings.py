"""POST /v1/embeddings as OpenAI defines it: the request, its checks and the response body.

Shared by the worker (which computes the vectors) and the gateway (which routes the call and
embeds questions for the semantic cache), so both refuse the same inputs with the same 400
(the surface's one ApiError, code invalid_value, param naming the field).
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.openai_api.errors import invalid_value

# OpenAI's own limit on inputs per request.
MAX_INPUTS = 2048

EncodingFormat = Literal["float", "base64"]


class EmbeddingRequest(BaseModel):
    """The body of POST /v1/embeddings."""

    # OpenAI's request has no other fields; an unknown one is refused, never ignored.
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    # A string, strings, one token array, or token arrays.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def texts_or_tokens(self) -> list[str] | list[list[int]]:
        """The inputs as a list: strings, or token arrays (never both)."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if not value:
            raise invalid_value("input is empty: send a string or a list of them", "input")
        if len(value) > MAX_INPUTS:
            raise invalid_value(
                f"input holds {len(value)} items; at most {MAX_INPUTS} per request", "input"
            )
        first = value[0]
        if isinstance(first, int):
            return [[int(t) for t in value]]  # type: ignore[arg-type]
        if isinstance(first, list):
            return [list(map(int, v)) for v in value]  # type: ignore[arg-type]
        return [str(v) for v in value]


def parse_request(data: Any) -> tuple[EmbeddingRequest, list[str] | list[list[int]]]:
    """A decoded JSON body -> the request and its inputs; ApiError (400) otherwise."""
    if not isinstance(data, dict):
        raise invalid_value("the request body must be a JSON object", None)
    try:
        request = EmbeddingRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error.get("loc") or ()
        param = str(loc[0]) if loc else None
        if error.get("type") == "extra_forbidden":
            message = f"{param}: not a field of the embeddings request"
        elif param == "input":
            message = (
                "input must be a string, a list of strings, a list of token ids or a list "
                "of lists of token ids"
            )
        else:
            message = f"{param}: {error.get('msg')}"
        raise invalid_value(message, param) from None
    inputs = request.texts_or_tokens()
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            if not item:
                raise invalid_value(f"input[{i}] is an empty string", "input")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise invalid_value(
                    f"input[{i}] is not valid Unicode (a lone surrogate)", "input"
                ) from None
        elif not item:
            raise invalid_value(f"input[{i}] is an empty token array", "input")
    return request, inputs


def check_dimensions(requested: int | None, dimensions: int) -> None:
    """Vectors cannot be shortened here: only the model's own size (or none) is accepted."""
    if requested is not None and requested != dimensions:
        raise invalid_value(
            f"this model gives {dimensions}-dimensional vectors and cannot shorten them; "
            f"leave dimensions out or send {dimensions}",
            "dimensions",
        )


def encode_vector(vector: npt.NDArray[np.float32], fmt: EncodingFormat) -> list[float] | str:
    """A vector as OpenAI sends it: floats, or base64 of little-endian float32."""
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def response_body(
    model: str,
    vectors: npt.NDArray[np.float32],
    fmt: EncodingFormat,
    prompt_tokens: int,
) -> dict[str, Any]:
    """The OpenAI response: one embedding object per input, in input order, and usage."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, fmt)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def decode_vector(value: Any) -> npt.NDArray[np.float32]:
    """One response item's embedding (floats or base64) as float32; ValueError if neither."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    if isinstance(value, list):
        return np.asarray(value, dtype=np.float32)
    raise ValueError("an embedding that is neither a list of floats nor base64")
