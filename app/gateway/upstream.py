"""The upstream dispatcher: what every call to the workers goes through, completions and
embeddings alike. It admits a call (key scope and limits, the alias's rate limit), picks its
first worker (holding it while the alias scales from zero), sends it, retries other workers
while nothing has reached the client, and finishes its request row and metrics.

Completions (app/gateway/proxy.py) and embeddings (app/gateway/embedding_calls.py) both hold
one Upstream; neither holds the other, so the semantic cache can sit between them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi.responses import Response

from app.analytics.traffic import TrafficClass
from app.config import Settings
from app.gateway.balancer import AllBusyError, Balancer, NoLiveWorkerError, Pick
from app.gateway.cold_start import ColdStart
from app.gateway.errors import all_busy, no_live_worker, unknown_model
from app.gateway.key_limits import KeyLimits
from app.gateway.metrics import UNKNOWN_LABEL, GatewayMetrics
from app.gateway.ratelimit import RateLimits
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

logger = logging.getLogger(__name__)

T = TypeVar("T")


class UpstreamFailure(Exception):
    """A worker failed this attempt before the first token; kind names how (for metrics)."""

    def __init__(self, kind: str, message: str, *, cool_down: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.cool_down = cool_down


def upstream_failure(exc: Exception, *, mid_stream: bool = False) -> UpstreamFailure:
    """What went wrong with a worker, as the UpstreamFailure that counts and logs it.

    Before the first token (mid_stream False) a timeout is the first-token one and the
    attempt is retried elsewhere; mid_stream, it is the inter-token one and the stream ends
    with an error event."""
    if isinstance(exc, UpstreamFailure):
        return exc
    if mid_stream:
        if isinstance(exc, TimeoutError | WorkerTimeoutError):
            return UpstreamFailure("timeout", "no token within the inter-token timeout")
        return UpstreamFailure("broken", f"the stream broke: {exc!r}")
    if isinstance(exc, WorkerHTTPError):
        what = {"timeout": "timed out", "connect": "unreachable"}.get(exc.kind, "broken answer")
        return UpstreamFailure(exc.kind, f"{what}: {exc}")
    if isinstance(exc, TimeoutError):
        return UpstreamFailure("timeout", "no first token in time")
    return UpstreamFailure("broken", f"unreadable stream: {exc}")


def status_failure(response: WorkerResponse, content: bytes) -> UpstreamFailure | None:
    """A worker's non-200 answer as a failure to retry; None when it is the client's to see
    (a 4xx)."""
    if response.status == 429:
        return UpstreamFailure("refused", "the worker's queue is full", cool_down=False)
    if response.status >= 500:
        return UpstreamFailure(
            "status", f"HTTP {response.status}: {content[:200].decode(errors='replace')}"
        )
    return None


def hop_headers(request_id: str | None, batch_id: str | None) -> bytes:
    """The headers of a call to a worker: its request id, and for a batch line the priority
    class the worker's engine schedules it in (behind interactive calls)."""
    headers = b"X-Request-Id: " + request_id.encode() + b"\r\n" if request_id else b""
    if batch_id is not None:
        headers += PRIORITY_HEADER.encode() + b": batch\r\n"
    return headers


@dataclass(frozen=True)
class WorkerAnswer(Generic[T]):
    """A worker's whole answer to a non-streamed call: a 200 (value: what the caller's parse
    made of it), or a 4xx that is the client's to see (value None)."""

    pick: Pick
    response: WorkerResponse
    content: bytes
    value: T | None


class Upstream:
    """Admits, places, sends and retries calls to the workers, and records how each ended;
    one per gateway process."""

    def __init__(
        self,
        settings: Settings,
        routing: RoutingState,
        balancer: Balancer,
        log: RequestLog,
        metrics: GatewayMetrics,
        client: WorkerClient,
        cold_start: ColdStart | None = None,
    ) -> None:
        self.settings = settings
        self.routing = routing
        self.balancer = balancer
        self.log = log
        self.metrics = metrics
        self.client = client
        # Scale from zero (app/gateway/cold_start.py); None: no holding.
        self.cold_start = cold_start
        self.rate_limits = RateLimits()
        self.key_limits = KeyLimits()
        self.request_ids = RequestIds()

    # -- admit and place ---------------------------------------------------------------------
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
        retry = self.settings.gateway_retry_after_s
        if isinstance(exc, AllBusyError):
            raise all_busy(route.alias, retry) from None
        raise no_live_worker(route.alias, retry) from None

    # -- send and retry ----------------------------------------------------------------------
    def attempts(self, route: AliasRoute, session: str | None, first: Pick) -> AsyncIterator[Pick]:
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

    async def send(
        self, pick: Pick, path: str, payload: bytes, headers: bytes, *, stream: bool
    ) -> WorkerResponse:
        """One hop to the picked worker: headers in (stream) or the whole answer (not)."""
        return await self.client.post(
            pick.worker.url,
            path,
            payload,
            headers=headers,
            timeout_s=self.settings.gateway_first_token_timeout_s,
            stream=stream,
        )

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
        async for pick in self.attempts(route, session, first):
            self.balancer.acquire(pick)
            try:
                response = await self.send(pick, path, payload, headers, stream=False)
                content = response.content
                if response.status != 200:
                    failure = status_failure(response, content)
                    if failure is None:
                        return WorkerAnswer(pick, response, content, None)
                    raise failure
                value = parse(content)
            except (WorkerHTTPError, UpstreamFailure) as exc:
                failures.append(self.failed(pick, upstream_failure(exc)))
                continue
            finally:
                self.balancer.release(pick)
            return WorkerAnswer(pick, response, content, value)
        raise self.give_up(route.alias, failures)

    def failed(self, pick: Pick, failure: UpstreamFailure) -> UpstreamFailure:
        """Count, log and (unless the worker only refused) cool down a failed attempt."""
        self.metrics.count_upstream_error(pick.worker.id, failure.kind)
        if failure.cool_down:
            self.balancer.failed(pick.worker)
        logger.warning("worker %d (%s): %s", pick.worker.id, pick.worker.url, failure)
        return failure

    def give_up(self, alias: str, failures: list[UpstreamFailure]) -> ApiError:
        """The answer to a call no worker could take: 503 when none was tried or all were
        full, else 502 naming the last failure."""
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

    # -- finish ------------------------------------------------------------------------------
    def refuse(self, record: RequestRecord, exc: ApiError, started: float) -> Response:
        """Finish the record of a call refused with exc (before or after trying workers) and
        answer it."""
        status = "rejected" if exc.status in (403, 404, 429, 503) else "error"
        record.total_ms = (time.perf_counter() - started) * 1000
        self.finish(record, status=status, http_status=exc.status, error=exc.message)
        return exc.response()

    def finish(
        self,
        record: RequestRecord,
        *,
        status: str = "ok",
        http_status: int = 200,
        error: str | None = None,
        model_name: str = "",
    ) -> None:
        """Close a call's record (total_ms set by the caller): key token counts, the request
        log, the metrics (model_name: the version served, "" where none was)."""
        record.status, record.http_status, record.error = status, http_status, error
        if record.api_key_id is not None and not record.cache_hit:
            used = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
            if used:
                self.key_limits.add_tokens(record.api_key_id, used)
        self.log.add(record)
        # Prometheus labels must stay few: an alias a client made up is labelled "unknown".
        alias = record.alias if record.alias in self.routing.snapshot.routes else UNKNOWN_LABEL
        self.metrics.count_request(
            alias,
            model_name,
            status,
            http_status,
            TrafficClass.BATCH if record.batch_id is not None else TrafficClass.LIVE,
            record.ttft_ms,
            record.total_ms,
            record.tokens_per_second,
        )
