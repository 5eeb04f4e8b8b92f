"""The gateway's HTTP/1.1 client for its hop to workers: keep-alive connections pooled per
worker (last used, first reused), one socket write per request, responses parsed by
httptools (llhttp, the parser uvicorn uses), Content-Length, chunked and close-delimited.

Written for this one hop instead of using httpx: httpcore's pool walks every pooled
connection with a few syscalls on each request, and that was a third of the gateway's event
loop at 32 clients (bench/RESULTS.md). Here an idle connection stays registered with the
event loop, so a worker that closes it is noticed when it happens, not polled for.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# Buffered, unread response bytes beyond which the worker's socket is not read from until
# the gateway catches up (a slow client of a fast stream).
READ_BUFFER_BYTES = 1 << 20
# Idle connections older than this are closed instead of reused: workers' servers drop idle
# connections after a few seconds (uvicorn: 5), and a fresh connection beats a stale one.
IDLE_EXPIRY_S = 4.0
# Parsed worker URLs kept; the set of workers is small, this only bounds a pathological churn.
ORIGINS_KEPT = 4096


class WorkerHTTPError(Exception):
    """The hop to a worker failed; kind names how, for metrics and retries."""

    kind = "broken"


class WorkerConnectError(WorkerHTTPError):
    """No connection, or it closed before the worker sent a byte: nothing was answered."""

    kind = "connect"


class WorkerTimeoutError(WorkerHTTPError):
    """Connecting, waiting for a free connection, or waiting for bytes took too long."""

    kind = "timeout"


class WorkerProtocolError(WorkerHTTPError):
    """The worker's bytes are not HTTP, or it closed the connection mid-response."""

    kind = "broken"


@dataclass(frozen=True)
class Origin:
    """Where a worker listens, parsed once from its URL."""

    scheme: str
    host: str
    port: int
    host_header: bytes
    prefix: str  # a path in the worker's URL (a server mounted under /something)


def parse_origin(url: str) -> Origin:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WorkerConnectError(f"not an http(s) worker URL: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WorkerConnectError(f"bad port in worker URL {url!r}: {exc}") from None
    return Origin(
        parts.scheme, parts.hostname, port, parts.netloc.encode("idna"), parts.path.rstrip("/")
    )


class WorkerResponse:
    """A worker's answer: status and headers once they are in; the body as it arrives."""

    def __init__(self, connection: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._connection = connection
        self.status = 0
        self.headers: dict[str, str] = {}
        self.content = b""  # the whole body of a non-streamed answer
        self.complete = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: WorkerHTTPError | None = None
        self._head: asyncio.Future[None] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None

    # -- fed by the connection ----------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _headers_done(self, status: int) -> None:
        self.status = status
        if not self._head.done():
            self._head.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_BUFFER_BYTES:
            self._connection.pause()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: WorkerHTTPError) -> None:
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()

    # -- read by the proxy ------------------------------------------------------------------
    async def _wait(self, future: asyncio.Future[None], timeout_s: float) -> None:
        # call_later instead of asyncio.timeout: this runs for every chunk of every stream.
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, future)
        try:
            await future
        except BaseException:
            # A timeout, or the caller cancelled (its client went away): end the exchange.
            self._connection.abort()
            raise
        finally:
            timer.cancel()

    async def read_chunk(self, timeout_s: float) -> bytes | None:
        """What arrived since the last call, waiting up to timeout_s for something;
        None once the body is complete and all of it was read."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._wait(self._waiter, timeout_s)
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if not self.complete:
            self._connection.resume()
        return data

    async def read(self, timeout_s: float) -> bytes:
        """The whole body; timeout_s bounds each wait for more of it."""
        parts = []
        while (chunk := await self.read_chunk(timeout_s)) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def lines(self, timeout_s: float) -> AsyncIterator[str]:
        """The body's lines without their line ends (an SSE stream's, mostly)."""
        pending = b""
        while (chunk := await self.read_chunk(timeout_s)) is not None:
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for line in whole:
                yield line.removesuffix(b"\r").decode("utf-8", errors="replace")
        if pending:
            yield pending.removesuffix(b"\r").decode("utf-8", errors="replace")

    def close(self) -> None:
        """Done with it. A response not read to its end closes its connection, which tells
        the worker that the client went away (it stops generating)."""
        if not self.complete or self._error is not None:
            self._connection.abort()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(WorkerTimeoutError("no answer from the worker in time"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a worker; carries one request at a time."""

    def __init__(self, client: WorkerClient, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.response: WorkerResponse | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._got_bytes = False
        self._close_delimited = False
        self._paused = False

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.client._connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and self.client.dead_peer_s > 0:
            detect_dead_peer(sock, self.client.dead_peer_s)

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._parser is None:
            # Bytes while no request is out: the worker is confused; do not reuse this.
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._failed(WorkerProtocolError(f"the worker's answer is not HTTP: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._lost(self)
        response = self.response
        if response is None:
            return
        if response.status and self._close_delimited:
            # HTTP/1.0 style: no length and not chunked, so the body ends with the connection.
            self._done(keep=False)
        elif not self._got_bytes:
            self._failed(WorkerConnectError("the worker closed the connection without answering"))
        else:
            self._failed(WorkerProtocolError("the worker closed the connection mid-answer"))

    # -- httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.response is not None and self._parser is not None
        headers = self.response.headers
        self._close_delimited = "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )
        self.response._headers_done(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        assert self._parser is not None
        self._done(keep=not self._close_delimited and self._parser.should_keep_alive())

    # -- ours ---------------------------------------------------------------------------------
    def _done(self, keep: bool) -> None:
        response = self.response
        assert response is not None
        self.response = None
        self._parser = None
        response._finish()
        self.resume()
        if keep and not self.closed:
            self.client._release(self)
        else:
            self.abort()

    def _failed(self, error: WorkerHTTPError) -> None:
        response, self.response, self._parser = self.response, None, None
        if response is not None:
            response._fail(error)

    def start(self, request: bytes) -> WorkerResponse:
        assert self.transport is not None
        response = self.response = WorkerResponse(self, asyncio.get_running_loop())
        self._parser = httptools.HttpResponseParser(self)
        self._got_bytes = False
        self._close_delimited = False
        self.transport.write(request)
        return response

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close now (connection_lost follows from the loop and does the bookkeeping)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


def detect_dead_peer(sock: socket.socket, within_s: float) -> None:
    """Have the kernel drop the connection when the worker's host stops answering.

    A host that vanishes (a cut link, a power loss) sends no reset: without this, a call on
    a kept-alive connection waits for the first-token timeout (minutes). Keepalive probes an
    idle connection (a worker still working on the first token); TCP_USER_TIMEOUT bounds
    both unacknowledged request bytes and unanswered probes. Linux options, skipped where
    the platform lacks them.
    """
    half = max(1, int(within_s / 2))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), half),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), half),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(within_s * 1000)),
    ]
    for level, name, value in options:
        if name is not None:
            sock.setsockopt(level, name, value)


class WorkerClient:
    """Pooled keep-alive HTTP/1.1 connections to workers, at most max_connections open."""

    def __init__(
        self, *, max_connections: int, connect_timeout_s: float, dead_peer_s: float = 0.0
    ) -> None:
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        # 0: leave dead-peer detection to the OS defaults (tests of the client alone).
        self.dead_peer_s = dead_peer_s
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._origins: dict[str, Origin] = {}
        self._ssl: ssl.SSLContext | None = None
        self._connections: set[_Connection] = set()

    @property
    def open_connections(self) -> int:
        return self._open

    def origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            if len(self._origins) >= ORIGINS_KEPT:
                self._origins.clear()
            origin = self._origins[url] = parse_origin(url)
        return origin

    async def post(
        self,
        url: str,
        path: str,
        body: bytes,
        *,
        headers: bytes = b"",
        timeout_s: float,
        stream: bool,
    ) -> WorkerResponse:
        """POST a JSON body to the worker at url. Returns once the headers are in (stream)
        or the whole answer is (not stream); timeout_s bounds each wait for the worker.

        headers: extra header lines, each ending in CRLF. A reused connection that the
        worker closed without answering is retried once on a new one."""
        origin = self.origin(url)
        request = b"".join((
            b"POST ", (origin.prefix + path).encode(), b" HTTP/1.1\r\nHost: ", origin.host_header,
            b"\r\nContent-Type: application/json\r\nContent-Length: ", str(len(body)).encode(),
            b"\r\n", headers, b"\r\n", body,
        ))  # fmt: skip
        connection, reused = await self._connection(origin)
        try:
            return await self._exchange(connection, request, timeout_s, stream)
        except WorkerConnectError:
            if not reused:
                raise
        connection, _ = await self._connection(origin, fresh=True)
        return await self._exchange(connection, request, timeout_s, stream)

    @staticmethod
    async def _exchange(
        connection: _Connection, request: bytes, timeout_s: float, stream: bool
    ) -> WorkerResponse:
        response = connection.start(request)
        await response._wait(response._head, timeout_s)
        if not stream:
            response.content = await response.read(timeout_s)
        return response

    async def _connection(self, origin: Origin, fresh: bool = False) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        if idle and not fresh:
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if connection.closed:
                    continue
                if now - connection.idle_since <= IDLE_EXPIRY_S:
                    return connection, True
                connection.abort()
        await self._take_slot()
        try:
            connection = await self._connect(origin)
        except BaseException:
            self._give_slot()
            raise
        return connection, False

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except TimeoutError:
            raise WorkerTimeoutError(
                f"no connection to {origin.host}:{origin.port} within {self.connect_timeout_s:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise WorkerConnectError(
                f"cannot connect to {origin.host}:{origin.port}: {exc}"
            ) from None
        return protocol

    async def _take_slot(self) -> None:
        if self._open < self.max_connections and not self._slot_waiters:
            self._open += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await waiter  # the slot is handed over by _give_slot
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._give_slot()  # handed over just as the wait ended: pass it on
            if isinstance(exc, TimeoutError):
                raise WorkerTimeoutError(
                    f"all {self.max_connections} connections to workers busy for "
                    f"{self.connect_timeout_s:g} s"
                ) from None
            raise

    def _give_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    def _release(self, connection: _Connection) -> None:
        if self._slot_waiters:
            # A call waits for a connection slot (maybe to another worker): free this one.
            connection.abort()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, []).append(connection)

    def _lost(self, connection: _Connection) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        self._give_slot()

    async def close(self) -> None:
        for connection in list(self._connections):
            connection.abort()
        self._connections.clear()
        self._idle.clear()
