"""The completion calls' short way through the app: POST /v1/chat/completions and
/v1/completions go straight from the gateway's own middleware to their handlers.

Starlette's router and FastAPI's route machinery (route matching over every route, the
exception middleware, the exit-stack middleware, the route's request wrapper, dependency
solving for a handler that declares none) cost about a fifth of the gateway's event loop
per call (bench/RESULTS.md, "Gateway overhead"). The routes stay registered, so OpenAPI
documents them and every other method or path takes the usual way; this lane answers the
same requests the same way: the same handler, the app's exception handlers looked up as
Starlette's ExceptionMiddleware looks them up, and an exception none handles going on to
the app's server-error handler (outside this middleware) as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            response = await endpoint(request)
            await response(scope, receive, sender)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            if started:
                raise RuntimeError(
                    "Caught handled exception, but response already started."
                ) from exc
            if inspect.iscoroutinefunction(handler):
                answer = await handler(request, exc)
            else:
                answer = await run_in_threadpool(handler, request, exc)
            if answer is not None:
                await answer(scope, receive, sender)
            # Reused exception instances would gather tracebacks across requests.
            exc.__traceback__ = None

    def _handler(self, exc: Exception) -> Handler | None:
        if isinstance(exc, HTTPException):
            handler = self.status_handlers.get(exc.status_code)
            if handler is not None:
                return handler
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                return handler
        return None
