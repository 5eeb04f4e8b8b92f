"""A cap on request body size, enforced before the body is parsed or buffered whole."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.openai_api.errors import ApiError


def too_large_message(limit_bytes: int) -> str:
    return (
        f"the request body is larger than the gateway's limit of {limit_bytes} bytes "
        "(HERD_GATEWAY_MAX_BODY_BYTES)"
    )


class BodyLimit:
    """ASGI middleware: 413 for a body over limit_bytes, by Content-Length or as it streams.

    A declared length over the limit is refused before a byte is read; a chunked body is
    counted while the app reads it, and reading stops at the limit (FastAPI passes the
    HTTPException raised from receive() through to the app's handler)."""

    def __init__(self, app: ASGIApp, limit_bytes: int, exempt_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit_bytes = limit_bytes
        # Routes that enforce a limit of their own.
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit_bytes:
                    raise HTTPException(413, too_large_message(self.limit_bytes))
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, send: Send) -> None:
        body = (
            ApiError(413, too_large_message(self.limit_bytes), code="body_too_large")
            .response()
            .body
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
