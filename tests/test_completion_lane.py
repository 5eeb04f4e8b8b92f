"""The gateway's completion lane (app/gateway/completion_lane.py) answers exactly as the
FastAPI route it short-cuts: one app serves the same handlers twice, once under a path the
lane takes and once under a path only the router serves, over real HTTP (uvicorn), and
every answer (success, each handled error, an unexpected error) must match."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from app.gateway.body_limit import BodyLimit
from app.gateway.completion_lane import CompletionLane
from app.openai_api.bodies import read_body
from app.openai_api.errors import ApiError, install_error_handlers
from app.openai_api.schemas import ChatCompletionRequest
from tests.gateway_harness import wait_for

LIMIT = 4096


async def answer(request: Request) -> Response:
    """One handler whose outcome the request chooses (the X-Outcome header)."""
    outcome = request.headers.get("x-outcome", "ok")
    if outcome == "api_error":
        raise ApiError(429, "slow down", type="rate_limit_error", retry_after_s=3)
    if outcome == "http_error":
        raise HTTPException(409, "conflict here")
    if outcome == "unexpected":
        raise RuntimeError("a bug")
    if outcome == "unencodable":
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
    if outcome == "invalid":
        raise RequestValidationError([{"type": "missing", "loc": ("body", "x"), "msg": "no"}])
    if outcome == "stream":

        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")
    body = await read_body(request, ChatCompletionRequest)
    # Starlette's router notes the matched route in the scope; the lane matches none.
    routed = "yes" if "route" in request.scope else "no"
    return JSONResponse({"got": body}, headers={"x-answer": "yes", "x-routed": routed})


async def unencodable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"unencodable": True}, 400)


def lane_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        CompletionLane, endpoints={"/lane": answer}, exception_handlers=app.exception_handlers
    )
    app.add_middleware(BodyLimit, limit_bytes=LIMIT)
    install_error_handlers(app, "gateway")
    app.add_exception_handler(UnicodeEncodeError, unencodable)
    for path in ("/lane", "/router"):
        app.add_api_route(path, answer, methods=["POST"])
    return app


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(lane_app(), log_level="critical", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def _both(base_url: str, method: str = "POST", **kwargs: object) -> tuple[httpx.Response, ...]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        return tuple(
            client.request(method, path, **kwargs)  # type: ignore[arg-type]
            for path in ("/lane", "/router")
        )


def _same(lane: httpx.Response, router: httpx.Response) -> None:
    assert lane.status_code == router.status_code
    assert lane.content == router.content
    drop = {"date", "x-routed"}
    assert {k: v for k, v in lane.headers.items() if k not in drop} == {
        k: v for k, v in router.headers.items() if k not in drop
    }


GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.mark.parametrize(
    "outcome", ["ok", "api_error", "http_error", "unexpected", "unencodable", "invalid", "stream"]
)
def test_every_outcome_is_answered_as_the_router_answers_it(base_url: str, outcome: str) -> None:
    lane, router = _both(base_url, json=GOOD, headers={"x-outcome": outcome, "x-request-id": "r1"})
    _same(lane, router)
    if outcome == "ok":
        assert (lane.headers["x-routed"], router.headers["x-routed"]) == ("no", "yes")
    if outcome == "unexpected":
        assert lane.status_code == 500 and lane.json()["error"]["code"] == "internal_error"


@pytest.mark.parametrize(
    "content, headers",
    [
        (b"{not json", {"content-type": "application/json"}),
        (b'{"model": "m", "messages": "no"}', {"content-type": "application/json"}),
        (b'{"model": "m"}', {"content-type": "text/plain"}),
        (b"", {"content-type": "application/json"}),
        (b"\xff\xfe", {"content-type": "application/json"}),
        (b"x" * (LIMIT + 1), {"content-type": "application/json"}),
    ],
)
def test_bad_bodies_are_refused_as_the_router_refuses_them(
    base_url: str, content: bytes, headers: dict[str, str]
) -> None:
    lane, router = _both(base_url, content=content, headers=headers)
    assert lane.status_code >= 400
    _same(lane, router)


def test_a_chunked_body_over_the_limit_is_refused_in_the_lane_too(base_url: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"x" * (LIMIT // 4)

    with httpx.Client(base_url=base_url, timeout=10) as client:
        lane = client.post("/lane", content=chunks(), headers={"content-type": "application/json"})
        router = client.post(
            "/router", content=chunks(), headers={"content-type": "application/json"}
        )
    assert lane.status_code == 413
    _same(lane, router)


def test_other_methods_take_the_router(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        assert client.get("/lane").status_code == 405
        assert client.get("/lane").json()["error"]["code"] == "method_not_allowed"
