"""The worker's completions: submit a request's choices to the engine and shape the answer,
whole or streamed, with the OpenAI surface's builders; count what happened."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.engine.errors import BadRequest, EngineError, GenerationFailed, QueueFull
from app.engine.events import Finished, TextDelta
from app.engine.protocol import Engine, Generation
from app.engine.requests import GenerationRequest
from app.openai_api.completions import ChatFormat, ChoiceText, ResponseFormat
from app.openai_api.errors import ApiError, bad_param, error_body, unavailable
from app.openai_api.sse import SSE_DONE, sse
from app.worker.choices import ChoiceSet, choice_requests, combined
from app.worker.errors import from_engine_error
from app.worker.metrics import WorkerMetrics
from app.worker.state import WorkerState
from app.worker.tool_calls import parse_tool_calls
from app.worker.tool_stream import ToolCallStream


async def _cancel_on_disconnect(request: Request, generation: Generation | ChoiceSet) -> None:
    """Wait for the client to go away, then cancel its generation (frees the slot)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            generation.cancel()
            return


class CompletionService:
    """Submits requests to the engine and shapes the answers; counts what happened."""

    def __init__(self, state: WorkerState, metrics: WorkerMetrics) -> None:
        self.state = state
        self.metrics = metrics

    def engine(self) -> Engine:
        engine = self.state.serving
        if engine is None:
            status = self.state.status
            detail = f": {self.state.error}" if self.state.error else ""
            retry_after_s = 1 if status == "loading" else None
            raise unavailable(f"the model is {status}{detail}", f"model_{status}", retry_after_s)
        return engine

    async def serve(
        self,
        request: Request,
        endpoint: str,
        build: GenerationRequest | ApiError,
        n: int,
        stream: bool,
        fmt: ResponseFormat,
        tool_names: set[str] | None = None,
    ) -> Response:
        """Run a request's choices; tool_names: the tools in play (their calls are parsed)."""
        if isinstance(build, ApiError):
            self.metrics.count_request(endpoint, "invalid")
            raise build
        engine = self.engine()
        slots = engine.info.slots_total
        if n > slots:
            self.metrics.count_request(endpoint, "invalid")
            raise bad_param(
                "n", f"at most {slots} choices: this worker decodes {slots} sequences at once"
            )
        prompt_param = "messages" if build.messages is not None else "prompt"
        try:
            choices = await ChoiceSet.submit(engine, choice_requests(build, n))
        except QueueFull as exc:
            self.metrics.count_request(endpoint, "rejected")
            raise from_engine_error(exc) from exc
        except BadRequest as exc:
            self.metrics.count_request(endpoint, "invalid")
            raise from_engine_error(exc, prompt_param) from exc
        except EngineError as exc:
            self.metrics.count_request(endpoint, "error")
            raise from_engine_error(exc) from exc
        if stream:
            return StreamingResponse(
                self._stream(endpoint, choices, fmt, tool_names, _forces_tool_calls(build)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        logprobs = build.sampling.logprobs is not None
        return await self._whole(request, endpoint, choices, fmt, logprobs, tool_names)

    async def _whole(
        self,
        request: Request,
        endpoint: str,
        choices: ChoiceSet,
        fmt: ResponseFormat,
        logprobs: bool,
        tool_names: set[str] | None,
    ) -> Response:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, choices))
        n = len(choices.generations)
        results = [ChoiceText("", "", [] if logprobs else None) for _ in range(n)]
        finished: list[Finished | None] = [None] * n
        try:
            async for index, event in choices.events():
                result = results[index]
                if isinstance(event, TextDelta):
                    result.parts.append(event.text)
                    if result.tokens is not None:
                        result.tokens.extend(event.tokens)
                else:
                    finished[index] = event
                    result.finish_reason = event.finish_reason
        except GenerationFailed as exc:
            self.metrics.count_request(endpoint, "error")
            raise from_engine_error(exc) from exc
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            choices.cancel()
        ends = [f for f in finished if f is not None]
        assert len(ends) == n
        if any(f.finish_reason == "cancelled" for f in ends):
            self.metrics.count_request(endpoint, "cancelled")
            return JSONResponse(error_body("request cancelled", "cancelled"), 499)
        self.metrics.count_request(endpoint, "ok")
        total = combined(ends)
        self.metrics.observe(total)
        for result in results:
            result.text = "".join(result.parts)
            _find_tool_calls(result, tool_names)
        return JSONResponse(fmt.whole(results, total))

    async def _stream(
        self,
        endpoint: str,
        choices: ChoiceSet,
        fmt: ResponseFormat,
        tool_names: set[str] | None,
        forced_calls: bool = False,
    ) -> AsyncIterator[bytes]:
        """Chunks as tokens come. Calls the grammar forces stream as delta.tool_calls while
        they generate (tool_stream.py); otherwise, with tools in play, each choice's text is
        held until it ends, then sent as content and tool_calls deltas (a call the model
        wrote freely is only known whole)."""
        outcome = "cancelled"  # unless the stream reaches its end: the client left
        n = len(choices.generations)
        ends: list[Finished] = []
        forced = bool(tool_names) and forced_calls and isinstance(fmt, ChatFormat)
        calls = [ToolCallStream() for _ in range(n)] if forced else None
        held = [ChoiceText("", "") for _ in range(n)] if tool_names and not forced else None
        try:
            for index in range(n):
                first = fmt.first_chunk(index)
                if first is not None:
                    yield sse(first)
            async for index, event in choices.events():
                if isinstance(event, TextDelta):
                    if calls is not None:
                        entries = calls[index].feed(event.text)
                        if entries:
                            assert isinstance(fmt, ChatFormat)
                            yield sse(fmt.tool_call_chunk(entries, index))
                    elif held is not None:
                        held[index].parts.append(event.text)
                    elif event.tokens:
                        yield sse(fmt.chunk(event.text, event.tokens, index))
                    else:
                        yield fmt.chunk_sse(event.text, index)
                    continue
                ends.append(event)
                reason: str = event.finish_reason
                if calls is not None and reason == "stop" and calls[index].calls:
                    reason = "tool_calls"
                if held is not None and isinstance(fmt, ChatFormat):
                    result = held[index]
                    result.text, result.finish_reason = "".join(result.parts), reason
                    _find_tool_calls(result, tool_names)
                    if result.tool_calls:
                        for chunk in fmt.tool_call_chunks(result, index):
                            yield sse(chunk)
                    elif result.text:
                        yield sse(fmt.chunk(result.text, index=index))
                    reason = result.finish_reason
                if n == 1:
                    yield sse(fmt.final_chunk(reason, event))
                else:
                    yield sse(fmt.end_chunk(reason, index))
            total = combined(ends)
            if total.finish_reason != "cancelled":
                outcome = "ok"
                self.metrics.observe(total)
            if n > 1:
                yield sse(fmt.usage_chunk(total))
            yield SSE_DONE
        except GenerationFailed as exc:
            outcome = "error"
            api = from_engine_error(exc)
            yield sse(api.body())
            yield SSE_DONE
        finally:
            # Runs also when the client disconnects and the response task is cancelled.
            choices.cancel()
            self.metrics.count_request(endpoint, outcome)


def _forces_tool_calls(request: GenerationRequest) -> bool:
    """Whether the grammar makes every choice's answer tool calls (tool_choice required or
    a named function)."""
    constraint = request.constraint
    return constraint is not None and constraint.kind == "tool_call"


def _find_tool_calls(result: ChoiceText, tool_names: set[str] | None) -> None:
    """Parse a finished choice's text for tool calls; a complete answer with calls ends
    with finish_reason tool_calls, as OpenAI's."""
    if not tool_names or result.finish_reason != "stop":
        return
    content, calls = parse_tool_calls(result.text, tool_names)
    if calls:
        result.content, result.tool_calls, result.finish_reason = content, calls, "tool_calls"
