"""One call through the gateway: route it, answer from the cache or a worker (retrying
another worker until the first token), stream it back, and record it.

A call is retried only while nothing has reached the client; once the first token is out,
a failure becomes an SSE error event. Every call, answered or not, leaves one request row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
from fastapi.responses import Response, StreamingResponse

from app.analytics.traffic import TrafficClass
from app.config import Settings
from app.gateway.balancer import AllBusyError, Balancer, NoLiveWorkerError, Pick
from app.gateway.cache import CachedAnswer, ResponseCache, cache_key, is_cacheable
from app.gateway.cold_start import ColdStart
from app.gateway.errors import all_busy, no_live_worker, sse_error, unknown_model
from app.gateway.key_limits import KeyLimits
from app.gateway.metrics import UNKNOWN_LABEL, GatewayMetrics
from app.gateway.ratelimit import RateLimits
from app.gateway.replies import CHAT, SSE_DONE, cached_body, cached_chunks
from app.gateway.request_ids import RequestIds
from app.gateway.request_log import RequestLog, RequestRecord
from app.gateway.routing import AliasRoute, RoutingState
from app.gateway.worker_client import (
    WorkerClient,
    WorkerHTTPError,
    WorkerResponse,
    WorkerTimeoutError,
)
from app.openai_api.errors import ApiError
from app.openai_api.headers import PRIORITY_HEADER

if TYPE_CHECKING:
    from app.gateway.semantic_cache import Lookup, SemanticCache

logger = logging.getLogger(__name__)

PATHS = {CHAT: "/v1/chat/completions", "completions": "/v1/completions"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class UpstreamFailure(Exception):
    """A worker failed this attempt before the first token; kind names how (for metrics)."""

    def __init__(self, kind: str, message: str, *, cool_down: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.cool_down = cool_down


class _Done:
    """The [DONE] sentinel of an SSE stream."""


DONE = _Done()

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerAnswer(Generic[T]):
    """A worker's whole answer to a non-streamed call: a 200 (value: what the caller's parse
    made of it), or a 4xx that is the client's to see (value None)."""

    pick: Pick
    response: WorkerResponse
    content: bytes
    value: T | None


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


@dataclass
class StreamState:
    """What a stream has carried so far."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    first_token_at: float | None = None


def dumps(value: Any) -> bytes:
    """Compact JSON; orjson for speed, json for what orjson refuses (integers over 64 bits
    in the extra fields a client may send through)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def _hop_headers(request_id: str | None, batch_id: str | None) -> bytes:
    """The headers of a call to a worker: its request id, and for a batch line the priority
    class the worker's engine schedules it in (behind interactive calls)."""
    headers = b"X-Request-Id: " + request_id.encode() + b"\r\n" if request_id else b""
    if batch_id is not None:
        headers += PRIORITY_HEADER.encode() + b": batch\r\n"
    return headers


def _hop_failure(exc: WorkerHTTPError) -> UpstreamFailure:
    what = {"timeout": "timed out", "connect": "unreachable"}.get(exc.kind, "broken answer")
    return UpstreamFailure(exc.kind, f"{what}: {exc}")


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


def _has_token(event: dict[str, Any]) -> bool:
    """Has the worker started answering (text, a finish, a tool call)?"""
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("text") or delta.get("content") or delta.get("tool_calls"):
            return True
        if choice.get("finish_reason") is not None:
            return True
    return event.get("usage") is not None


def _parse_line(line: str) -> dict[str, Any] | _Done | None:
    """An SSE line as an event; None for lines that carry none (blank, comments, fields)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("an SSE event that is not a JSON object")
    return value


async def _next_event(lines: AsyncIterator[str]) -> dict[str, Any] | _Done | None:
    """The next event, or None when the stream ended."""
    async for line in lines:
        event = _parse_line(line)
        if event is not None:
            return event
    return None


class Proxy:
    """Routes and forwards completion calls; owned by the app, one per gateway process."""

    def __init__(
        self,
        settings: Settings,
        routing: RoutingState,
        balancer: Balancer,
        cache: ResponseCache,
        log: RequestLog,
        metrics: GatewayMetrics,
        client: WorkerClient,
    ) -> None:
        self.settings = settings
        self.routing = routing
        self.balancer = balancer
        self.cache = cache
        self.log = log
        self.metrics = metrics
        self.client = client
        self.rate_limits = RateLimits()
        self.key_limits = KeyLimits()
        self.request_ids = RequestIds()
        # Scale from zero (app/gateway/cold_start.py); set by the runtime, None: no holding.
        self.cold_start: ColdStart | None = None
        # The semantic cache (app/gateway/semantic_cache.py); set by the runtime.
        self.semantic: SemanticCache | None = None

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
            route = self.admit(record.alias or "", api_key_id)
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
            status = "rejected" if exc.status in (403, 404, 429, 503) else "error"
            record.total_ms = (time.perf_counter() - started) * 1000
            self.finish(record, status=status, http_status=exc.status, error=exc.message)
            return exc.response()

    def _new_record(
        self, endpoint: str, body: dict[str, Any], api_key_id: int | None, session: str | None
    ) -> RequestRecord:
        """The request-log row of a call, filled in as the call goes."""
        user = body.get("user")
        return RequestRecord(
            id=self.request_ids.new(),
            created_at=datetime.now(UTC),
            endpoint=endpoint,
            alias=str(body["model"]),
            api_key_id=api_key_id,
            session_id=session,
            user_id=user if isinstance(user, str) else None,
            prompt=body.get("messages") if endpoint == CHAT else {"prompt": body.get("prompt")},
        )

    def admit(self, alias: str, api_key_id: int | None) -> AliasRoute:
        """The alias's route, once the key's scope and limits and the alias's own rate limit
        let the call in (every endpoint's calls); raises the ApiError that refuses it."""
        snapshot = self.routing.snapshot
        if api_key_id is not None:
            rule = snapshot.key_rules.get(api_key_id)
            if rule is not None:
                self.key_limits.admit(api_key_id, rule, alias)
        route = snapshot.routes.get(alias)
        if route is None:
            raise unknown_model(alias)
        wait_s = self.rate_limits.wait_s(alias, route.settings.rate_limit_rpm)
        if wait_s:
            raise ApiError(
                429,
                f"rate limit of {route.settings.rate_limit_rpm} requests per minute for "
                f"{alias!r} reached",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after_s=wait_s,
            )
        return route

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
            call.route, pick = await self.wait_or_refuse(exc, route, session, batch)
            return pick

    async def first_pick(
        self, route: AliasRoute, session: str | None, batch: bool
    ) -> tuple[AliasRoute, Pick]:
        """The route (fresh, after a cold-start wait) and the worker for a call's first
        attempt; raises the ApiError that refuses the call when there is none."""
        try:
            return route, self.balancer.pick(route, session, batch=batch)
        except (NoLiveWorkerError, AllBusyError) as exc:
            return await self.wait_or_refuse(exc, route, session, batch)

    async def wait_or_refuse(
        self, exc: Exception, route: AliasRoute, session: str | None, batch: bool
    ) -> tuple[AliasRoute, Pick]:
        """After the balancer found no worker (exc): for a deployment without a live worker
        yet, hold the call until one is ready (scale from zero); else its ApiError."""
        cold = self.cold_start
        if isinstance(exc, NoLiveWorkerError) and cold is not None and cold.applies(route):
            return await cold.wait(route, session, batch=batch)
        raise self._no_worker(exc, route.alias) from None

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

    def _no_worker(self, exc: Exception, alias: str) -> ApiError:
        retry = self.settings.gateway_retry_after_s
        if isinstance(exc, AllBusyError):
            return all_busy(alias, retry)
        return no_live_worker(alias, retry)

    # -- cache -------------------------------------------------------------------------------
    def _from_cache(
        self, call: Call, hit: CachedAnswer, deployment_id: int | None, model_id: int | None
    ) -> Response:
        record = call.record
        record.cache_hit = True
        record.deployment_id, record.model_id = deployment_id, model_id
        self.metrics.count_cache_hit(call.route.alias)
        rid = str(record.id)
        usage = hit.usage
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        record.response = hit.text
        record.finish_reason = hit.finish_reason
        if call.body.get("stream"):
            chunks = cached_chunks(call.endpoint, rid, hit, call.include_usage)
            record.ttft_ms = (time.perf_counter() - call.started) * 1000
            self.finish(record, call=call)
            return StreamingResponse(_iterate(chunks), media_type="text/event-stream",
                                     headers=SSE_HEADERS)  # fmt: skip
        body = cached_body(call.endpoint, rid, hit)
        record.ttft_ms = (time.perf_counter() - call.started) * 1000
        self.finish(record, call=call)
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
    def _payload(self, call: Call) -> dict[str, Any]:
        if call.body.get("stream"):
            # Usage comes in a last chunk; the client sees it only if it asked for it.
            return {**call.body, "stream_options": {"include_usage": True}}
        return call.body

    async def _send(self, call: Call, pick: Pick, *, stream: bool) -> WorkerResponse:
        """The call to the worker: headers in (stream) or the whole answer (not stream)."""
        return await self.client.post(
            pick.worker.url,
            PATHS[call.endpoint],
            dumps(self._payload(call)),
            headers=_hop_headers(str(call.record.id), call.record.batch_id),
            timeout_s=self.settings.gateway_first_token_timeout_s,
            stream=stream,
        )

    def _attempts(self, route: AliasRoute, session: str | None, first: Pick) -> AsyncIterator[Pick]:
        """The first pick, then other workers, up to HERD_GATEWAY_MAX_ATTEMPTS in all."""

        async def attempts() -> AsyncIterator[Pick]:
            tried: set[int] = set()
            pick = first
            for attempt in range(self.settings.gateway_max_attempts):
                if attempt:
                    try:
                        pick = self.balancer.pick(
                            route, session, frozenset(tried), batch=first.batch
                        )
                    except (NoLiveWorkerError, AllBusyError):
                        return
                tried.add(pick.worker.id)
                yield pick

        return attempts()

    async def send_unary(
        self,
        route: AliasRoute,
        first: Pick,
        path: str,
        payload: bytes,
        headers: bytes,
        parse: Callable[[bytes], T],
        session: str | None = None,
    ) -> WorkerAnswer[T]:
        """Send a non-streamed call to first, then to other workers while they fail; the
        first 200 answer that parse takes (parse raises UpstreamFailure for a broken one),
        or the first 4xx that is the client's to see. Raises the ApiError of giving up."""
        failures: list[UpstreamFailure] = []
        async for pick in self._attempts(route, session, first):
            self.balancer.acquire(pick)
            try:
                response = await self.client.post(
                    pick.worker.url,
                    path,
                    payload,
                    headers=headers,
                    timeout_s=self.settings.gateway_first_token_timeout_s,
                    stream=False,
                )
                content = response.content
                if response.status != 200:
                    failure = self._status_failure(response, content)
                    if failure is None:
                        return WorkerAnswer(pick, response, content, None)
                    raise failure
                value = parse(content)
            except WorkerHTTPError as exc:
                self._failed(pick, f := _hop_failure(exc))
                failures.append(f)
                continue
            except UpstreamFailure as f:
                self._failed(pick, f)
                failures.append(f)
                continue
            finally:
                self.balancer.release(pick)
            return WorkerAnswer(pick, response, content, value)
        raise self._give_up(route.alias, failures)

    def _failed(self, pick: Pick, failure: UpstreamFailure) -> None:
        self.metrics.count_upstream_error(pick.worker.id, failure.kind)
        if failure.cool_down:
            self.balancer.failed(pick.worker)
        logger.warning("worker %d (%s): %s", pick.worker.id, pick.worker.url, failure)

    def _give_up(self, alias: str, failures: list[UpstreamFailure]) -> ApiError:
        retry = self.settings.gateway_retry_after_s
        if not failures:
            return no_live_worker(alias, retry)
        if all(f.kind == "refused" for f in failures):
            return all_busy(alias, retry)
        return ApiError(
            502,
            f"no worker for {alias!r} could answer ({len(failures)} tried): {failures[-1]}",
            type="upstream_error",
            code="upstream_failed",
            retry_after_s=retry,
        )

    @staticmethod
    def _status_failure(response: WorkerResponse, content: bytes) -> UpstreamFailure | None:
        """None when the worker's non-200 answer is the client's to see (a 4xx)."""
        if response.status == 429:
            return UpstreamFailure("refused", "the worker's queue is full", cool_down=False)
        if response.status >= 500:
            return UpstreamFailure(
                "status", f"HTTP {response.status}: {content[:200].decode(errors='replace')}"
            )
        return None

    def _client_error(
        self, call: Call, pick: Pick, response: WorkerResponse, content: bytes
    ) -> Response:
        """Pass a worker's 4xx (a prompt too long, a bad parameter) to the client as it is."""
        self._served_by(call, pick)
        try:
            message = json.loads(content)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = content[:500].decode(errors="replace")
        self.finish(call.record, status="error", http_status=response.status, error=str(message))
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
        answer = await self.send_unary(
            call.route,
            first,
            PATHS[call.endpoint],
            dumps(self._payload(call)),
            _hop_headers(str(call.record.id), call.record.batch_id),
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
        self._account(record, data.get("usage"), data.get("timings"))
        timings = data.get("timings") or {}
        if isinstance(timings.get("ttft_ms"), int | float):
            record.ttft_ms = float(timings["ttft_ms"])
        self.finish(record, call=call)
        self._store(call, text, record.finish_reason, data.get("usage"))
        return _json(data)

    # -- streamed --------------------------------------------------------------------------------
    async def _stream(self, call: Call, first: Pick) -> Response:
        failures: list[UpstreamFailure] = []
        async for pick in self._attempts(call.route, call.session, first):
            self.balancer.acquire(pick)
            response: WorkerResponse | None = None
            read_s = self.settings.gateway_first_token_timeout_s
            try:
                response = await self._send(call, pick, stream=True)
                if response.status != 200:
                    content = await response.read(read_s)
                    failure = self._status_failure(response, content)
                    if failure is None:
                        self.balancer.release(pick)
                        response.close()
                        return self._client_error(call, pick, response, content)
                    raise failure
                lines = response.lines(read_s)
                head: list[dict[str, Any]] = []
                done = False
                async with asyncio.timeout(self.settings.gateway_first_token_timeout_s):
                    while True:
                        event = await _next_event(lines)
                        if event is None:
                            raise UpstreamFailure("broken", "the stream ended before any token")
                        if isinstance(event, _Done):
                            done = True
                            break
                        if "error" in event:
                            raise UpstreamFailure("status", f"error event: {event['error']}")
                        head.append(event)
                        if _has_token(event):
                            break
            except (WorkerHTTPError, TimeoutError, UpstreamFailure, ValueError) as exc:
                if isinstance(exc, UpstreamFailure):
                    failure = exc
                elif isinstance(exc, TimeoutError):
                    failure = UpstreamFailure("timeout", "no first token in time")
                elif isinstance(exc, ValueError):
                    failure = UpstreamFailure("broken", f"unreadable stream: {exc}")
                else:
                    failure = _hop_failure(exc)
                self._failed(pick, failure)
                failures.append(failure)
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
        raise self._give_up(call.route.alias, failures)

    def _chunk(self, call: Call, event: dict[str, Any], state: StreamState) -> bytes | None:
        """Re-label a worker's chunk with the response id; note its text, usage, timings."""
        event["id"] = str(call.record.id)
        choices = event.get("choices") or []
        for choice in choices:
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if piece:
                state.text.append(piece)
            if choice.get("finish_reason") is not None:
                state.finish_reason = choice["finish_reason"]
        if event.get("usage") is not None:
            state.usage = event["usage"]
        if event.get("timings") is not None:
            state.timings = event["timings"]
        if not choices and event.get("usage") is not None and not call.include_usage:
            return None  # the usage chunk the gateway asked for, not the client
        return b"data: " + dumps(event) + b"\n\n"

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
                    event = await _next_event(lines)
                if event is None:
                    raise UpstreamFailure("broken", "the worker closed the stream mid-answer")
                if isinstance(event, _Done):
                    break
                if "error" in event:
                    # The worker's own error event: pass it on as it is.
                    message = str((event.get("error") or {}).get("message", event["error"]))
                    self.metrics.count_upstream_error(pick.worker.id, "error_event")
                    yield b"data: " + json.dumps(event).encode() + b"\n\n"
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
            if isinstance(exc, UpstreamFailure):
                failure = exc
            elif isinstance(exc, TimeoutError | WorkerTimeoutError):
                failure = UpstreamFailure("timeout", "no token within the inter-token timeout")
            else:
                failure = UpstreamFailure("broken", f"the stream broke: {exc!r}")
            self._failed(pick, failure)
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
        self._account(record, state.usage, state.timings)
        http_status = {"ok": 200, "cancelled": 499}.get(status, 502)
        self.finish(record, call=call, status=status, http_status=http_status, error=error)

    # -- recording -----------------------------------------------------------------------------
    @staticmethod
    def _account(record: RequestRecord, usage: Any, timings: Any) -> None:
        if isinstance(usage, dict):
            record.prompt_tokens = usage.get("prompt_tokens")
            record.completion_tokens = usage.get("completion_tokens")
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                record.cached_tokens = details.get("cached_tokens")
        if isinstance(timings, dict):
            for name in ("queue_ms", "tokens_per_second"):
                value = timings.get(name)
                if isinstance(value, int | float):
                    setattr(record, name, float(value))

    def finish(
        self,
        record: RequestRecord,
        *,
        call: Call | None = None,
        status: str = "ok",
        http_status: int = 200,
        error: str | None = None,
        model_name: str = "",
    ) -> None:
        """Close a call's record: key token counts, the request log, the metrics (for every
        endpoint; model_name names the version served where no Call carries it)."""
        record.status, record.http_status, record.error = status, http_status, error
        if record.api_key_id is not None and not record.cache_hit:
            used = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
            if used:
                self.key_limits.add_tokens(record.api_key_id, used)
        if call is not None:
            record.total_ms = (time.perf_counter() - call.started) * 1000
        self.log.add(record)
        model = call.model_name if call is not None else model_name
        # Prometheus labels must stay few: an alias a client made up is labelled "unknown".
        alias = record.alias if record.alias in self.routing.snapshot.routes else UNKNOWN_LABEL
        self.metrics.count_request(
            alias,
            model,
            status,
            http_status,
            TrafficClass.BATCH if record.batch_id is not None else TrafficClass.LIVE,
            record.ttft_ms,
            record.total_ms,
            record.tokens_per_second,
        )


async def _iterate(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _json(body: dict[str, Any]) -> Response:
    return Response(content=dumps(body), media_type="application/json")
