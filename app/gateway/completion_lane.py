"""The completion calls' short way through the app: POST /v1/chat/completions and
/v1/completions go straight from the gateway's own middleware to their handlers.

Starlette's router and FastAPI's route machinery (route matching over every route, the
exception middleware, the exit-stack middleware, the route's request wrapper, dependency
solving for a handler that declares none) cost about a fifth of the gateway's event loop
per call (bench/RESULTS.md, "Gateway overhead"). The routes stay registered, so OpenAPI
documents them and every other method or path takes the usual way; this lane answers the
same requests the same way: the same handler, wrapped in Starlette's own exception handling
(wrap_app_handling_exceptions, as its ExceptionMiddleware and FastAPI's routes wrap theirs)
with the app's handlers, and an exception none handles going on to the app's server-error
handler (outside this middleware) as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

# Private to Starlette, and what FastAPI's own routes call (fastapi/routing.py).
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Any]


class CompletionLane:
    """ASGI middleware: POST to one of endpoints' paths runs that endpoint directly.

    exception_handlers: the app's own (FastAPI.exception_handlers), read when the app builds
    its middleware (at its first call, when every handler is registered)."""

    def __init__(
        self,
        app: ASGIApp,
        endpoints: Mapping[str, Endpoint],
        exception_handlers: Mapping[Any, Handler],
    ) -> None:
        self.app = app
        self.endpoints = dict(endpoints)
        # As Starlette's ExceptionMiddleware splits them; 500 and Exception belong to the
        # server-error middleware, which is outside this one.
        self.status_handlers = {
            k: v for k, v in exception_handlers.items() if isinstance(k, int) and k != 500
        }
        self.exception_handlers = {
            k: v
            for k, v in exception_handlers.items()
            if isinstance(k, type) and k is not Exception
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            self.endpoints.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path")
            else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        # As Starlette's ExceptionMiddleware hands them to the route it wraps.
        scope["starlette.exception_handlers"] = (self.exception_handlers, self.status_handlers)

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            response = await endpoint(request)
            await response(scope, receive, send)

        await wrap_app_handling_exceptions(answer, request)(scope, receive, send)
