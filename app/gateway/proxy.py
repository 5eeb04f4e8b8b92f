"""One call through the gateway: route it, answer from the cache or a worker (retrying
another worker until the first token), stream it back, and record it.

A call is retried only while nothing has reached the client; once the first token is out,
a failure becomes an SSE error event. Every call, answered or not, leaves one request row.
Admission, placement, retries and the row's end are the upstream dispatcher's
(app/gateway/upstream.py), shared with embeddings.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi.responses import Response, StreamingResponse

from app.config import Settings
from app.gateway.balancer import AllBusyError, NoLiveWorkerError, Pick
from app.gateway.cache import CachedAnswer, ResponseCache, cache_key, is_cacheable
from app.gateway.errors import sse_error
from app.gateway.request_log import RequestRecord
from app.gateway.routing import AliasRoute
from app.gateway.semantic_cache import Lookup, SemanticCache
from app.gateway.stream_events import Done, StreamState, dumps, has_token, next_event
from app.gateway.upstream import (
    Upstream,
    UpstreamFailure,
    hop_headers,
    status_failure,
    upstream_failure,
)
from app.gateway.worker_client import WorkerHTTPError, WorkerResponse
from app.openai_api.completions import CHAT, cached_body, cached_chunks
from app.openai_api.errors import ApiError
from app.openai_api.sse import SSE_DONE, sse

PATHS = {CHAT: "/v1/chat/completions", "completions": "/v1/completions"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class Call:
    """One call in flight."""

    endpoint: str
    body: dict[str, Any]
    record: RequestRecord
    route: AliasRoute
    session: str | None
    started: float
    include_usage: bool
    cache_key: str | None = None
    model_name: str = ""
    # The semantic cache's lookup for this call (aliases that use it), stored into after.
    semantic: Lookup | None = None


def _completion(content: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """A worker's non-streamed completion and its first choice; UpstreamFailure if the 200
    answer is not one."""
    try:
        data = orjson.loads(content)
        choice = data["choices"][0]
        if isinstance(data, dict) and isinstance(choice, dict):
            return data, choice
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    raise UpstreamFailure("broken", "an answer that is not a completion")


def _session(body: dict[str, Any], header: str | None) -> str | None:
    user = body.get("user")
    return header or (user if isinstance(user, str) and user else None)


class Proxy:
    """Routes and forwards completion calls; owned by the app, one per gateway process."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        cache: ResponseCache,
        semantic: SemanticCache | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.balancer = upstream.balancer
        self.cache = cache
        # The semantic cache (app/gateway/semantic_cache.py); None: not used.
        self.semantic = semantic

    # -- entry -------------------------------------------------------------------------------
    async def complete(
        self,
        endpoint: str,
        body: dict[str, Any],
        *,
        api_key_id: int | None,
        session_header: str | None,
        batch_id: str | None = None,
        batch_line: int | None = None,
    ) -> Response:
        """Answer one completion call: admit it, try the caches, place it on a worker.
        A batch line (batch_id, and its number) has no session: it is no conversation."""
        started = time.perf_counter()
        session = _session(body, session_header) if batch_id is None else None
        record = self._new_record(endpoint, body, api_key_id, session)
        record.batch_id, record.batch_line = batch_id, batch_line
        try:
            route = self.upstream.admit(record.alias or "", api_key_id)
            record.log_text = route.settings.log_text
            stream_options = body.get("stream_options") or {}
            call = Call(
                endpoint=endpoint,
                body=body,
                record=record,
                route=route,
                session=session,
                started=started,
                include_usage=bool(stream_options.get("include_usage")),
            )
            if route.settings.semantic_cache_alias and endpoint == CHAT and self.semantic:
                call.semantic = await self.semantic.lookup(route, body)
                if call.semantic is not None and call.semantic.is_hit:
                    return self._from_semantic(call, call.semantic)
            cacheable = route.settings.cache_enabled and is_cacheable(body)
            placed = await self._place(call, cacheable)
            if not isinstance(placed, Pick):
                return placed  # answered from the cache while no worker was free
            if cacheable:
                cached = self._cached(call, placed)
                if cached is not None:
                    return cached
            if body.get("stream"):
                return await self._stream(call, placed)
            return await self._unary(call, placed)
        except ApiError as exc:
            return self.upstream.refuse(record, exc, started)

    def _new_record(
        self, endpoint: str, body: dict[str, Any], api_key_id: int | None, session: str | None
    ) -> RequestRecord:
        """The request-log row of a call, filled in as the call goes."""
        user = body.get("user")
        return RequestRecord(
            id=self.upstream.request_ids.new(),
            created_at=datetime.now(UTC),
            endpoint=endpoint,
            alias=str(body["model"]),
            api_key_id=api_key_id,
            session_id=session,
            user_id=user if isinstance(user, str) else None,
            prompt=body.get("messages") if endpoint == CHAT else {"prompt": body.get("prompt")},
        )

    async def _place(self, call: Call, cacheable: bool) -> Pick | Response:
        """A worker for the call; without one, a cached answer of any version of the alias,
        or (scale from zero) a wait until a worker is ready."""
        route, session, batch = call.route, call.session, call.record.batch_id is not None
        try:
            return self.balancer.pick(route, session, batch=batch)
        except (NoLiveWorkerError, AllBusyError) as exc:
            if cacheable:
                for d in route.deployments:
                    key = cache_key(route.alias, d.model_id, call.endpoint, call.body)
                    hit = self.cache.get(key)
                    if hit is not None:
                        call.model_name = d.model_name
                        return self._from_cache(call, hit, d.id, d.model_id)
            call.route, pick = await self.upstream.wait_or_refuse(exc, route, session, batch)
            return pick

    def _cached(self, call: Call, pick: Pick) -> Response | None:
        """The cached answer of the picked worker's model version, if there is one."""
        call.cache_key = cache_key(
            call.route.alias, pick.deployment.model_id, call.endpoint, call.body
        )
        hit = self.cache.get(call.cache_key)
        if hit is None:
            return None
        call.model_name = pick.deployment.model_name
        return self._from_cache(call, hit, pick.deployment.id, pick.deployment.model_id)

    # -- cache -------------------------------------------------------------------------------
    def _from_cache(
        self, call: Call, hit: CachedAnswer, deployment_id: int | None, model_id: int | None
    ) -> Response:
        record = call.record
        record.cache_hit = True
        record.deployment_id, record.model_id = deployment_id, model_id
        self.upstream.metrics.count_cache_hit(call.route.alias)
        rid = str(record.id)
        usage = hit.usage
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        record.response = hit.text
        record.finish_reason = hit.finish_reason
        if call.body.get("stream"):
            chunks = cached_chunks(call.endpoint, rid, hit, call.include_usage)
            record.ttft_ms = (time.perf_counter() - call.started) * 1000
            self._finish(call)
            return StreamingResponse(_iterate(chunks), media_type="text/event-stream",
                                     headers=SSE_HEADERS)  # fmt: skip
        body = cached_body(call.endpoint, rid, hit)
        record.ttft_ms = (time.perf_counter() - call.started) * 1000
        self._finish(call)
        return _json(body)

    def _from_semantic(self, call: Call, lookup: Lookup) -> Response:
        entry = lookup.hit
        assert entry is not None
        call.record.cache_similarity = entry.similarity
        call.model_name = entry.model
        served = next((d for d in call.route.deployments if d.model_name == entry.model), None)
        answer = CachedAnswer(entry.answer, entry.finish_reason, entry.usage, entry.model, 0.0)
        if served is None:
            return self._from_cache(call, answer, None, None)
        return self._from_cache(call, answer, served.id, served.model_id)

    def _store(self, call: Call, text: str, finish_reason: str | None, usage: Any) -> None:
        if finish_reason not in ("stop", "length"):
            return
        if call.semantic is not None and self.semantic is not None:
            self.semantic.remember(
                call.semantic,
                answer=text,
                finish_reason=finish_reason,
                usage=usage if isinstance(usage, dict) else {},
                model=call.model_name or call.route.alias,
                request_id=call.record.id,
            )
        if call.cache_key is None:
            return
        self.cache.put(
            call.cache_key,
            text=text,
            finish_reason=finish_reason,
            usage=usage if isinstance(usage, dict) else {},
            model=call.model_name or call.route.alias,
            ttl_s=call.route.settings.cache_ttl_s,
        )

    # -- attempts ----------------------------------------------------------------------------
    def _payload(self, call: Call) -> bytes:
        if call.body.get("stream"):
            # Usage comes in a last chunk; the client sees it only if it asked for it.
            return dumps({**call.body, "stream_options": {"include_usage": True}})
        return dumps(call.body)

    def _headers(self, call: Call) -> bytes:
        return hop_headers(str(call.record.id), call.record.batch_id)

    def _client_error(
        self, call: Call, pick: Pick, response: WorkerResponse, content: bytes
    ) -> Response:
        """Pass a worker's 4xx (a prompt too long, a bad parameter) to the client as it is."""
        self._served_by(call, pick)
        try:
            message = json.loads(content)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = content[:500].decode(errors="replace")
        self.upstream.finish(
            call.record, status="error", http_status=response.status, error=str(message)
        )
        return Response(
            content=content,
            status_code=response.status,
            media_type=response.headers.get("content-type", "application/json"),
        )

    def _served_by(self, call: Call, pick: Pick) -> None:
        record = call.record
        record.worker_id = pick.worker.id
        record.deployment_id = pick.deployment.id
        record.model_id = pick.worker.model_id or pick.deployment.model_id
        call.model_name = pick.deployment.model_name
        self.balancer.remember(call.route.alias, call.session, pick.worker.id)

    # -- non-streamed --------------------------------------------------------------------------
    async def _unary(self, call: Call, first: Pick) -> Response:
        answer = await self.upstream.send_unary(
            call.route,
            first,
            PATHS[call.endpoint],
            self._payload(call),
            self._headers(call),
            _completion,
            session=call.session,
        )
        if answer.value is None:
            return self._client_error(call, answer.pick, answer.response, answer.content)
        data, choice = answer.value
        self._served_by(call, answer.pick)
        data["id"] = str(call.record.id)
        record = call.record
        text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        record.response = text
        reason = choice.get("finish_reason")
        record.finish_reason = reason if isinstance(reason, str) else None
        _account(record, data.get("usage"), data.get("timings"))
        timings = data.get("timings") or {}
        if isinstance(timings.get("ttft_ms"), int | float):
            record.ttft_ms = float(timings["ttft_ms"])
        self._finish(call)
        self._store(call, text, record.finish_reason, data.get("usage"))
        return _json(data)

    # -- streamed --------------------------------------------------------------------------------
    async def _stream(self, call: Call, first: Pick) -> Response:
        failures: list[UpstreamFailure] = []
        upstream, read_s = self.upstream, self.settings.gateway_first_token_timeout_s
        async for pick in upstream.attempts(call.route, call.session, first):
            self.balancer.acquire(pick)
            response: WorkerResponse | None = None
            try:
                path, payload = PATHS[call.endpoint], self._payload(call)
                headers = self._headers(call)
                response = await upstream.send(pick, path, payload, headers, stream=True)
                if response.status != 200:
                    content = await response.read(read_s)
                    failure = status_failure(response, content)
                    if failure is None:
                        self.balancer.release(pick)
                        response.close()
                        return self._client_error(call, pick, response, content)
                    raise failure
                lines = response.lines(read_s)
                head, done = await _first_token(lines, read_s)
            except (WorkerHTTPError, TimeoutError, UpstreamFailure, ValueError) as exc:
                failures.append(upstream.failed(pick, upstream_failure(exc)))
                self.balancer.release(pick)
                if response is not None:
                    response.close()
                continue
            self._served_by(call, pick)
            first_token_at = time.perf_counter()
            state = StreamState(first_token_at=first_token_at)
            call.record.ttft_ms = (first_token_at - call.started) * 1000
            relay = self._relay(call, pick, response, lines, head, done, state)
            return StreamingResponse(relay, media_type="text/event-stream", headers=SSE_HEADERS)
        raise upstream.give_up(call.route.alias, failures)

    def _chunk(self, call: Call, event: dict[str, Any], state: StreamState) -> bytes | None:
        """Re-label a worker's chunk with the response id; note its text, usage, timings."""
        event["id"] = str(call.record.id)
        state.note(event)
        if not event.get("choices") and event.get("usage") is not None and not call.include_usage:
            return None  # the usage chunk the gateway asked for, not the client
        return sse(dumps(event))

    async def _relay(
        self,
        call: Call,
        pick: Pick,
        response: WorkerResponse,
        lines: AsyncIterator[str],
        head: list[dict[str, Any]],
        done: bool,
        state: StreamState,
    ) -> AsyncIterator[bytes]:
        finished = False
        try:
            for item in head:
                chunk = self._chunk(call, item, state)
                if chunk is not None:
                    yield chunk
            while not done:
                async with asyncio.timeout(self.settings.gateway_inter_token_timeout_s):
                    event = await next_event(lines)
                if event is None:
                    raise UpstreamFailure("broken", "the worker closed the stream mid-answer")
                if isinstance(event, Done):
                    break
                if "error" in event:
                    # The worker's own error event: pass it on as it is.
                    message = str((event.get("error") or {}).get("message", event["error"]))
                    self.upstream.metrics.count_upstream_error(pick.worker.id, "error_event")
                    yield sse(event)
                    self._finish_stream(call, state, status="error", error=message)
                    finished = True
                    return
                chunk = self._chunk(call, event, state)
                if chunk is not None:
                    yield chunk
            # Recorded before [DONE] goes out: a client that votes on the answer as soon as
            # it ends must find the row (feedback waits only for rows the log holds).
            self._finish_stream(call, state)
            finished = True
            self._store(call, "".join(state.text), state.finish_reason, state.usage)
            yield SSE_DONE
        except (WorkerHTTPError, TimeoutError, UpstreamFailure, ValueError) as exc:
            failure = self.upstream.failed(pick, upstream_failure(exc, mid_stream=True))
            message = f"the worker failed mid-answer: {failure}"
            self._finish_stream(call, state, status="error", error=message)
            finished = True
            yield sse_error(message, code="upstream_failed")
        finally:
            if not finished:
                # The client went away: closing the upstream response cancels the generation.
                self._finish_stream(call, state, status="cancelled", error="client disconnected")
            response.close()
            self.balancer.release(pick)

    def _finish_stream(
        self, call: Call, state: StreamState, status: str = "ok", error: str | None = None
    ) -> None:
        record = call.record
        record.response = "".join(state.text)
        reason = state.finish_reason  # the last choice chunk's, seen by _chunk
        record.finish_reason = reason if isinstance(reason, str) else None
        _account(record, state.usage, state.timings)
        http_status = {"ok": 200, "cancelled": 499}.get(status, 502)
        self._finish(call, status=status, http_status=http_status, error=error)

    # -- recording -----------------------------------------------------------------------------
    def _finish(
        self, call: Call, *, status: str = "ok", http_status: int = 200, error: str | None = None
    ) -> None:
        """Close the call's record, timed from its start, with the version that served it."""
        call.record.total_ms = (time.perf_counter() - call.started) * 1000
        self.upstream.finish(
            call.record,
            status=status,
            http_status=http_status,
            error=error,
            model_name=call.model_name,
        )


async def _first_token(
    lines: AsyncIterator[str], timeout_s: float
) -> tuple[list[dict[str, Any]], bool]:
    """The events up to the worker's first token (and whether [DONE] came first); raises
    UpstreamFailure, TimeoutError or ValueError for a stream that does not start."""
    head: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            event = await next_event(lines)
            if event is None:
                raise UpstreamFailure("broken", "the stream ended before any token")
            if isinstance(event, Done):
                return head, True
            if "error" in event:
                raise UpstreamFailure("status", f"error event: {event['error']}")
            head.append(event)
            if has_token(event):
                return head, False


def _account(record: RequestRecord, usage: Any, timings: Any) -> None:
    """Note a worker's usage and timings on the call's record."""
    if isinstance(usage, dict):
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            record.cached_tokens = details.get("cached_tokens")
        drafts = usage.get("completion_tokens_details")
        if isinstance(drafts, dict):
            accepted = drafts.get("accepted_prediction_tokens")
            rejected = drafts.get("rejected_prediction_tokens")
            if isinstance(accepted, int) and isinstance(rejected, int):
                record.drafted_tokens, record.accepted_tokens = accepted + rejected, accepted
    if isinstance(timings, dict):
        for name in ("queue_ms", "tokens_per_second"):
            value = timings.get(name)
            if isinstance(value, int | float):
                setattr(record, name, float(value))


async def _iterate(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _json(body: dict[str, Any]) -> Response:
    return Response(content=dumps(body), media_type="application/json")
