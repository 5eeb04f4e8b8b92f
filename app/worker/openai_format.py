"""OpenAI response shapes for chat and text completions, whole and as stream chunks.

Every final body and final chunk carries usage and Herd's `timings` object.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from app.engine.events import Finished


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


SSE_DONE = sse("[DONE]")
# Stands for the text in a chunk rendered once; no generated text contains a NUL.
_TEXT_MARK = "\x00"


class ResponseFormat:
    """Base: one response's id, creation time and model name."""

    object_name = ""
    chunk_object_name = ""
    id_prefix = ""

    def __init__(self, model: str) -> None:
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self._chunk_halves: tuple[str, str] | None = None

    def chunk_sse(self, text: str) -> str:
        """sse(self.chunk(text)), but per token only the text is JSON-encoded: the rest of
        the event is rendered once per response (this runs for every streamed token)."""
        halves = self._chunk_halves
        if halves is None:
            head, tail = sse(self.chunk(_TEXT_MARK)).split(json.dumps(_TEXT_MARK), 1)
            halves = self._chunk_halves = (head, tail)
        return halves[0] + json.dumps(text) + halves[1]

    def _envelope(self, obj: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, **choice}],
        }

    @staticmethod
    def _accounting(finished: Finished) -> dict[str, Any]:
        return {"usage": finished.usage.to_json(), "timings": finished.timings.to_json()}

    def first_chunk(self) -> dict[str, Any] | None:
        return None

    def chunk(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def final_chunk(self, finished: Finished) -> dict[str, Any]:
        raise NotImplementedError

    def whole(self, text: str, finished: Finished) -> dict[str, Any]:
        raise NotImplementedError


class ChatFormat(ResponseFormat):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def first_chunk(self) -> dict[str, Any]:
        delta = {"role": "assistant", "content": ""}
        return self._envelope(self.chunk_object_name, {"delta": delta, "finish_reason": None})

    def chunk(self, text: str) -> dict[str, Any]:
        return self._envelope(
            self.chunk_object_name, {"delta": {"content": text}, "finish_reason": None}
        )

    def final_chunk(self, finished: Finished) -> dict[str, Any]:
        body = self._envelope(
            self.chunk_object_name, {"delta": {}, "finish_reason": finished.finish_reason}
        )
        return {**body, **self._accounting(finished)}

    def whole(self, text: str, finished: Finished) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        body = self._envelope(
            self.object_name, {"message": message, "finish_reason": finished.finish_reason}
        )
        return {**body, **self._accounting(finished)}


class TextFormat(ResponseFormat):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl"

    def chunk(self, text: str) -> dict[str, Any]:
        return self._envelope(
            self.chunk_object_name, {"text": text, "logprobs": None, "finish_reason": None}
        )

    def final_chunk(self, finished: Finished) -> dict[str, Any]:
        choice = {"text": "", "logprobs": None, "finish_reason": finished.finish_reason}
        return {**self._envelope(self.chunk_object_name, choice), **self._accounting(finished)}

    def whole(self, text: str, finished: Finished) -> dict[str, Any]:
        choice = {"text": text, "logprobs": None, "finish_reason": finished.finish_reason}
        return {**self._envelope(self.object_name, choice), **self._accounting(finished)}
