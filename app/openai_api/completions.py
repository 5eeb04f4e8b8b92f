"""OpenAI response shapes for chat and text completions, whole and as stream chunks: the
worker's answers and the gateway's replays of cached ones.

Every final body the worker sends carries usage and Herd's `timings` object; so does the
final chunk of a stream (with several choices: a last chunk without choices, as OpenAI sends
usage). A replay is shaped as the live answer it stands for, with the usage stored with it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.engine.events import Finished, TokenLogprob
from app.openai_api.sse import SSE_DONE, sse

# The endpoint name of chat completions (the other is "completions").
CHAT = "chat.completions"


def _token_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(tokens: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI chat logprobs: {"content": [{token, logprob, bytes, top_logprobs}, ...]}."""
    return {
        "content": [
            {
                "token": _token_text(t.piece),
                "logprob": t.logprob,
                "bytes": list(t.piece),
                "top_logprobs": [
                    {"token": _token_text(p), "logprob": lp, "bytes": list(p)} for p, lp in t.top
                ],
            }
            for t in tokens
        ],
        "refusal": None,
    }


# Stands for the text in a chunk rendered once; no generated text contains a NUL.
_TEXT_MARK = "\x00"


@dataclass
class ChoiceText:
    """What one choice produced: its text, how it ended, its tokens' log probabilities."""

    text: str
    finish_reason: str
    tokens: list[TokenLogprob] | None = None
    parts: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] | None = None
    # The text the tool calls leave over (None: none), when there are calls.
    content: str | None = None


class StoredAnswer(Protocol):
    """What a replay needs of a stored answer (the gateway's cache entries)."""

    @property
    def text(self) -> str: ...
    @property
    def finish_reason(self) -> str: ...
    @property
    def usage(self) -> dict[str, Any]: ...
    @property
    def model(self) -> str: ...


class ResponseFormat:
    """Base: one response's id, creation time and model name."""

    object_name = ""
    chunk_object_name = ""
    id_prefix = ""

    def __init__(self, model: str, response_id: str | None = None) -> None:
        # A replay keeps the id the gateway gave the request; a live answer gets its own.
        self.id = response_id or f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self._chunk_halves: dict[int, tuple[bytes, bytes]] = {}

    def chunk_sse(self, text: str, index: int = 0) -> bytes:
        """sse(self.chunk(text)), but per token only the text is JSON-encoded: the rest of
        the event is rendered once per response (this runs for every streamed token)."""
        halves = self._chunk_halves.get(index)
        if halves is None:
            event = sse(self.chunk(_TEXT_MARK, index=index))
            head, tail = event.split(json.dumps(_TEXT_MARK).encode(), 1)
            halves = self._chunk_halves[index] = (head, tail)
        return halves[0] + json.dumps(text).encode() + halves[1]

    def _envelope(self, obj: str, *choices: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": list(choices),
        }

    @staticmethod
    def accounting(finished: Finished) -> dict[str, Any]:
        return {"usage": finished.usage.to_json(), "timings": finished.timings.to_json()}

    def first_chunk(self, index: int = 0) -> dict[str, Any] | None:
        return None

    def chunk(
        self, text: str, tokens: tuple[TokenLogprob, ...] = (), index: int = 0
    ) -> dict[str, Any]:
        raise NotImplementedError

    def end_chunk(self, finish_reason: str, index: int = 0) -> dict[str, Any]:
        raise NotImplementedError

    def final_chunk(self, finish_reason: str, finished: Finished) -> dict[str, Any]:
        """The last chunk of a one-choice stream: its end, with usage and timings."""
        return {**self.end_chunk(finish_reason), **self.accounting(finished)}

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        """The last chunk of a several-choice stream: no choices, usage and timings."""
        return {**self._envelope(self.chunk_object_name), **self.accounting(finished)}

    def replay_chunks(self, answer: StoredAnswer, include_usage: bool) -> list[dict[str, Any]]:
        """A stored answer as the chunks of a one-choice stream; its usage in a last chunk
        without choices when the client asked for it (stream_options.include_usage)."""
        first = self.first_chunk()
        chunks = [] if first is None else [first]
        chunks += [self.chunk(answer.text), self.end_chunk(answer.finish_reason)]
        if include_usage:
            chunks.append({**self._envelope(self.chunk_object_name), "usage": answer.usage})
        return chunks

    def choice(self, index: int, result: ChoiceText) -> dict[str, Any]:
        raise NotImplementedError

    def whole(self, results: list[ChoiceText], finished: Finished) -> dict[str, Any]:
        return {**self.body(results), **self.accounting(finished)}

    def body(self, results: list[ChoiceText]) -> dict[str, Any]:
        """The final body's envelope and choices; usage and timings are the caller's."""
        choices = [self.choice(i, r) for i, r in enumerate(results)]
        return self._envelope(self.object_name, *choices)


class ChatFormat(ResponseFormat):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def first_chunk(self, index: int = 0) -> dict[str, Any]:
        delta = {"role": "assistant", "content": ""}
        choice = {"index": index, "delta": delta, "finish_reason": None}
        return self._envelope(self.chunk_object_name, choice)

    def chunk(
        self, text: str, tokens: tuple[TokenLogprob, ...] = (), index: int = 0
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": index,
            "delta": {"content": text},
            "finish_reason": None,
        }
        if tokens:
            choice["logprobs"] = chat_logprobs(tokens)
        return self._envelope(self.chunk_object_name, choice)

    def end_chunk(self, finish_reason: str, index: int = 0) -> dict[str, Any]:
        choice = {"index": index, "delta": {}, "finish_reason": finish_reason}
        return self._envelope(self.chunk_object_name, choice)

    def choice(self, index: int, result: ChoiceText) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.tool_calls:
            message = {"role": "assistant", "content": result.content}
            message["tool_calls"] = result.tool_calls
        return {
            "index": index,
            "message": message,
            "logprobs": None if result.tokens is None else chat_logprobs(result.tokens),
            "finish_reason": result.finish_reason,
        }

    def tool_call_chunks(self, result: ChoiceText, index: int = 0) -> list[dict[str, Any]]:
        """A buffered choice with tool calls as stream chunks: content, then the calls (each
        whole, with its index), before the end chunk."""
        chunks = []
        if result.content:
            chunks.append(self.chunk(result.content, index=index))
        calls = [{"index": i, **call} for i, call in enumerate(result.tool_calls or [])]
        chunks.append(self.tool_call_chunk(calls, index))
        return chunks

    def tool_call_chunk(self, calls: list[dict[str, Any]], index: int = 0) -> dict[str, Any]:
        """A chunk whose delta holds tool_calls entries (each with its own index)."""
        choice = {"index": index, "delta": {"tool_calls": calls}, "finish_reason": None}
        return self._envelope(self.chunk_object_name, choice)


class TextFormat(ResponseFormat):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, model: str, response_id: str | None = None) -> None:
        super().__init__(model, response_id)
        # Characters of completion text so far per choice: text_offset of the next token.
        self._offsets: dict[int, int] = {}

    def logprobs(
        self, tokens: tuple[TokenLogprob, ...] | list[TokenLogprob], index: int = 0
    ) -> dict[str, Any]:
        """The legacy completions shape: parallel lists, top alternatives as dicts."""
        texts = [_token_text(t.piece) for t in tokens]
        offset = self._offsets.get(index, 0)
        offsets = []
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        self._offsets[index] = offset
        return {
            "tokens": texts,
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{_token_text(p): lp for p, lp in t.top} for t in tokens],
            "text_offset": offsets,
        }

    def chunk(
        self, text: str, tokens: tuple[TokenLogprob, ...] = (), index: int = 0
    ) -> dict[str, Any]:
        logprobs = self.logprobs(tokens, index) if tokens else None
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}
        return self._envelope(self.chunk_object_name, choice)

    def end_chunk(self, finish_reason: str, index: int = 0) -> dict[str, Any]:
        choice = {"index": index, "text": "", "logprobs": None, "finish_reason": finish_reason}
        return self._envelope(self.chunk_object_name, choice)

    def choice(self, index: int, result: ChoiceText) -> dict[str, Any]:
        return {
            "index": index,
            "text": result.text,
            "logprobs": None if result.tokens is None else self.logprobs(result.tokens, index),
            "finish_reason": result.finish_reason,
        }


def answer_format(endpoint: str, model: str, response_id: str | None = None) -> ResponseFormat:
    """The shapes of endpoint's answers (CHAT or "completions")."""
    if endpoint == CHAT:
        return ChatFormat(model, response_id)
    return TextFormat(model, response_id)


def cached_body(endpoint: str, response_id: str, answer: StoredAnswer) -> dict[str, Any]:
    """A non-streamed completion carrying a stored answer, with the usage stored with it."""
    fmt = answer_format(endpoint, answer.model, response_id)
    body = fmt.body([ChoiceText(answer.text, answer.finish_reason)])
    return {**body, "usage": answer.usage}


def cached_chunks(
    endpoint: str, response_id: str, answer: StoredAnswer, include_usage: bool
) -> list[bytes]:
    """A stored answer as SSE events, [DONE] included."""
    fmt = answer_format(endpoint, answer.model, response_id)
    return [*map(sse, fmt.replay_chunks(answer, include_usage)), SSE_DONE]
