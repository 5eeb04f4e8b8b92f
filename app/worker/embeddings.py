"""The worker's POST /v1/embeddings: check, tokenize, embed in one batch, shape the answer."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from app.engine.embedder import EmbeddingEngine
from app.engine.errors import BadRequest, EngineError
from app.openai_api.embeddings import check_dimensions, parse_request, response_body
from app.openai_api.errors import ApiError, invalid_value
from app.worker.errors import from_engine_error
from app.worker.priority import request_priority
from app.worker.service import CompletionService

ENDPOINT = "embeddings"


async def embed_route(request: Request, service: CompletionService) -> Response:
    """Answer one embeddings call; every refusal is a 400 naming its field."""
    metrics = service.metrics
    started = time.perf_counter()
    try:
        priority = request_priority(request.headers)
    except ApiError:
        metrics.count_request(ENDPOINT, "invalid")
        raise
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        metrics.count_request(ENDPOINT, "invalid")
        return invalid_value(f"the request body is not valid JSON: {exc}").response()
    try:
        body, inputs = parse_request(data)
    except ApiError as exc:
        metrics.count_request(ENDPOINT, "invalid")
        return exc.response()
    engine = service.engine()
    if not isinstance(engine, EmbeddingEngine):
        metrics.count_request(ENDPOINT, "invalid")
        return invalid_value(
            f"{service.state.alias!r} is served for chat and completions, not embeddings; "
            "deploy an embedding model (the deployment's embeddings option, or "
            "`herd worker --embeddings`) and send its alias",
            "model",
        ).response()
    try:
        check_dimensions(body.dimensions, engine.embedding.dimensions)
    except ApiError as exc:
        metrics.count_request(ENDPOINT, "invalid")
        return exc.response()
    try:
        if isinstance(inputs[0], str):
            # Off the event loop: thousands of long inputs take a while to tokenize.
            texts = [str(t) for t in inputs]
            tokens = await asyncio.to_thread(lambda: [engine.tokenize(t) for t in texts])
        else:
            tokens = [list(t) for t in inputs if isinstance(t, list)]
        vectors = await engine.embed(tokens, priority)
    except BadRequest as exc:
        metrics.count_request(ENDPOINT, "invalid")
        return invalid_value(str(exc), "input").response()
    except EngineError as exc:
        api: ApiError = from_engine_error(exc)
        metrics.count_request(ENDPOINT, "rejected" if api.status == 429 else "error")
        raise api from exc
    metrics.count_request(ENDPOINT, "ok")
    prompt_tokens = sum(len(t) for t in tokens)
    answer = response_body(service.state.alias, vectors, body.encoding_format, prompt_tokens)
    answer["timings"] = {"total_ms": round((time.perf_counter() - started) * 1000, 3)}
    return JSONResponse(answer)
