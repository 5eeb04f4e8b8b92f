"""POST /v1/embeddings through the gateway, and the embeddings the semantic cache asks for.

Routed like completions (alias -> deployment by weight -> least-loaded worker), retried on
another worker when one fails, recorded as one request row. The input text is not stored in
`messages`: embedding calls index whole document sets, which the text log is not for.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from fastapi.responses import JSONResponse, Response

from app.gateway.balancer import Pick
from app.gateway.request_log import RequestRecord
from app.gateway.routing import AliasRoute
from app.gateway.upstream import Upstream, hop_headers
from app.openai_api.embeddings import decode_vector, parse_request
from app.openai_api.errors import ApiError, error_body, invalid_value

logger = logging.getLogger(__name__)

PATH = "/v1/embeddings"
ENDPOINT = "embeddings"


class EmbeddingCalls:
    """Forwards embedding calls to the workers of an alias; one per gateway process."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    async def handle(
        self,
        raw: bytes,
        *,
        api_key_id: int | None,
        batch_id: str | None = None,
        batch_line: int | None = None,
    ) -> Response:
        """The public endpoint: validate, route, forward, record."""
        started = time.perf_counter()
        try:
            body, _ = parse_request(json.loads(raw))
        except ApiError as exc:
            return JSONResponse(exc.body(), 400)
        except (ValueError, UnicodeDecodeError) as exc:
            error = invalid_value(f"the request body is not valid JSON: {exc}", None)
            return JSONResponse(error.body(), 400)
        upstream = self.upstream
        record = RequestRecord(
            id=upstream.request_ids.new(),
            created_at=datetime.now(UTC),
            endpoint=ENDPOINT,
            alias=body.model,
            api_key_id=api_key_id,
            user_id=body.user,
            log_text=False,
            batch_id=batch_id,
            batch_line=batch_line,
        )
        model_name = ""
        try:
            route = upstream.admit(body.model, api_key_id)
            pick, content = await self._fetch(route, raw, str(record.id), batch_id)
            record.worker_id = pick.worker.id
            record.deployment_id = pick.deployment.id
            record.model_id = pick.worker.model_id or pick.deployment.model_id
            model_name = pick.deployment.model_name
        except ApiError as exc:
            return upstream.refuse(record, exc, started)
        except _WorkerRefused as refused:
            record.worker_id = refused.pick.worker.id
            record.deployment_id = refused.pick.deployment.id
            model_name = refused.pick.deployment.model_name
            record.total_ms = (time.perf_counter() - started) * 1000
            upstream.finish(
                record,
                status="error",
                http_status=refused.status,
                error=refused.message,
                model_name=model_name,
            )
            return refused.response()
        record.prompt_tokens = _usage(content)
        record.completion_tokens = 0
        record.total_ms = (time.perf_counter() - started) * 1000
        upstream.finish(record, model_name=model_name)
        return Response(content, 200, media_type="application/json")

    async def embed(self, alias: str, text: str) -> npt.NDArray[np.float32]:
        """One text's vector from the workers of alias (for the semantic cache); raises
        ApiError when none can give it."""
        payload = orjson.dumps({"model": alias, "input": text, "encoding_format": "base64"})
        route = self.upstream.admit(alias, None)
        try:
            _, content = await self._fetch(route, payload, None)
        except _WorkerRefused as refused:
            raise ApiError(
                502, f"the embedding alias {alias!r} refused: {refused.message}"
            ) from None
        try:
            return decode_vector(orjson.loads(content)["data"][0]["embedding"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise ApiError(502, f"{alias!r} answered with no embedding") from None

    async def _fetch(
        self, route: AliasRoute, payload: bytes, request_id: str | None,
        batch_id: str | None = None,
    ) -> tuple[Pick, bytes]:  # fmt: skip
        """The first worker's 200 answer, trying others on failure; _WorkerRefused for a
        4xx the caller should see."""
        upstream = self.upstream
        route, pick = await upstream.first_pick(route, None, batch_id is not None)
        headers = hop_headers(request_id, batch_id)
        answer = await upstream.send_unary(route, pick, PATH, payload, headers, bytes)
        if answer.value is None:
            raise _WorkerRefused(answer.pick, answer.response.status, answer.content)
        return answer.pick, answer.value


class _WorkerRefused(Exception):
    """A worker's 4xx (bad input, a chat-only worker): the client's to see."""

    def __init__(self, pick: Pick, status: int, content: bytes) -> None:
        self.shaped = False
        try:
            error = orjson.loads(content)["error"]
            message = str(error["message"])
            self.shaped = bool(message) and isinstance(error.get("type"), str)
        except (ValueError, KeyError, TypeError):
            message = content[:500].decode(errors="replace")
        if status == 404 and not self.shaped:
            # A worker without the endpoint: an external server not started for embeddings.
            message = f"the workers of this alias do not serve embeddings ({message})"
        super().__init__(message)
        self.pick = pick
        self.status = status
        self.content = content
        self.message = message

    def response(self) -> Response:
        """The worker's error as it is when it is in OpenAI's shape, else wrapped in it."""
        if self.shaped:
            return Response(self.content, self.status, media_type="application/json")
        body = error_body(self.message, "invalid_request_error", "upstream_refused")
        return JSONResponse(body, self.status)


def _usage(content: bytes) -> int | None:
    try:
        data: Any = orjson.loads(content)
        return int(data["usage"]["prompt_tokens"])
    except (ValueError, KeyError, TypeError):
        return None
