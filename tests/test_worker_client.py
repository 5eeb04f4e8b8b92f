"""The gateway's worker-hop HTTP client against real sockets: a tiny asyncio server that
answers with the raw bytes each test chooses."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from app.gateway.worker_client import (
    WorkerClient,
    WorkerConnectError,
    WorkerProtocolError,
    WorkerTimeoutError,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def serve(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    """A server on a free port; the list counts the connections it accepted."""
    accepted: list[int] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", accepted


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_sends_one_request_each() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(OK)

    async def main() -> None:
        server, url, accepted = await serve(handler)
        client = WorkerClient(max_connections=4, connect_timeout_s=5)
        for _ in range(5):
            response = await client.post(
                url, "/v1/x", b'{"a":1}', headers=b"X-Request-Id: r\r\n", timeout_s=5, stream=False
            )
            assert (response.status, response.content) == (200, b"{}")
        assert len(accepted) == 1
        assert seen[0].startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"X-Request-Id: r\r\n" in seen[0] and seen[0].endswith(b'\r\n\r\n{"a":1}')
        await client.close()
        server.close()

    run(main())


def test_chunked_stream_lines_and_a_close_delimited_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if b"/stream" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b'data: {"n": 1}\n', b"\ndata: [DO", b"NE]\n\n"):
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
            await writer.drain()

    async def main() -> None:
        server, url, _ = await serve(handler)
        client = WorkerClient(max_connections=4, connect_timeout_s=5)
        response = await client.post(url, "/stream", b"{}", timeout_s=5, stream=True)
        lines = [line async for line in response.lines(5)]
        assert lines == ['data: {"n": 1}', "", "data: [DONE]", ""]
        plain = await client.post(url, "/plain", b"{}", timeout_s=5, stream=False)
        assert plain.content == b"all of it"
        await client.close()
        server.close()

    run(main())


def test_a_connection_the_worker_closed_while_idle_is_replaced() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        # Keep-alive ends here: the worker closes the idle connection.

    async def main() -> None:
        server, url, accepted = await serve(handler)
        client = WorkerClient(max_connections=4, connect_timeout_s=5)
        for _ in range(3):
            response = await client.post(url, "/", b"{}", timeout_s=5, stream=False)
            assert response.content == b"{}"
        assert len(accepted) == 3
        await client.close()
        server.close()

    run(main())


def test_refused_hung_and_garbage_workers_raise_their_kind() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(60)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not HTTP at all\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def main() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        client = WorkerClient(max_connections=4, connect_timeout_s=5)
        with pytest.raises(WorkerConnectError):
            await client.post(closed, "/", b"{}", timeout_s=5, stream=False)
        hung, hung_url, _ = await serve(hang)
        with pytest.raises(WorkerTimeoutError):
            await client.post(hung_url, "/", b"{}", timeout_s=0.2, stream=False)
        bad, bad_url, _ = await serve(garbage)
        with pytest.raises(WorkerProtocolError):
            await client.post(bad_url, "/", b"{}", timeout_s=5, stream=False)
        assert await _settled(client)
        await client.close()
        hung.close()
        bad.close()

    run(main())


async def _settled(client: WorkerClient) -> bool:
    """Aborted connections leave the count once the loop has run their connection_lost."""
    for _ in range(50):
        if client.open_connections == 0:
            return True
        await asyncio.sleep(0.01)
    return False
