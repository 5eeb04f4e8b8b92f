"""What every gateway route reads from its request: the runtime, and the caller's API key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.control.keys import hash_key
from app.gateway.batch_marking import Caller
from app.gateway.errors import unauthorized
from app.gateway.runtime import GatewayRuntime
from app.openai_api.errors import unavailable


def runtime_of(request: Request) -> GatewayRuntime:
    """The gateway runtime the app's lifespan started."""
    runtime: GatewayRuntime = request.app.state.runtime
    return runtime


async def authenticate(request: Request) -> int | None:
    """The id of the caller's API key; None when keys are not required and none was sent.

    Checked against the hashes loaded with the routing state: no query per request. The key
    itself is never logged or stored. Async although it awaits nothing: FastAPI would run a
    plain function on its thread pool, a thread hop on every call."""
    runtime = runtime_of(request)
    snapshot = runtime.routing.snapshot
    if not snapshot.loaded:
        raise unavailable(
            "the gateway has not reached its database since it started; retry shortly",
            "database_unavailable",
            runtime.settings.gateway_retry_after_s,
        )
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        key_id = snapshot.key_ids.get(hash_key(token.strip()))
        if key_id is not None:
            return key_id
    if snapshot.keys_exist or runtime.settings.require_api_key:
        runtime.metrics.unauthorized += 1
        raise unauthorized(
            "a valid API key is required: send `Authorization: Bearer <key>` "
            "(operators create keys with `herd keys create NAME`)"
            if not token
            else "the API key is not valid (unknown, revoked or expired)"
        )
    return None


async def authenticate_call(request: Request) -> Caller:
    """The caller of a completion or embedding call: a batch line (its batch's marking and
    runner token, counted against the batch owner's key) or a client with its key."""
    batch = await runtime_of(request).batch_credentials.check(request)
    if batch is not None:
        return batch
    return Caller(await authenticate(request))


ApiKeyId = Annotated[int | None, Depends(authenticate)]
SESSION_HEADER_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "X-Session-Id",
            "in": "header",
            "required": False,
            "description": "Keeps a conversation on one worker.",
            "schema": {"type": "string"},
        }
    ]
}
