"""A fast stand-in worker for gateway tests: a real process speaking the worker's OpenAI
protocol over real HTTP, registered in `workers` with heartbeats like a real worker.

Answers name the stub ("<name> says: ..."), so a test can tell who served each call.
Run: python tests/stub_worker.py --db-url URL --alias A [--deployment-id N] [--model-id N]
     [--name NAME] [--tokens N] [--token-delay-ms MS] [--slots N] [--mode MODE]
Prints "READY <worker_id> <url>" once registered and serving.

--mode makes it misbehave, for fault tests (MODES says how); the default answers properly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

# How a misbehaving stub answers completion calls (health and heartbeats stay normal).
MODES = {
    "ok": "answer properly",
    "hang": "read the request, then send nothing at all, not even headers",
    "hang-mid-stream": "stream the first token, then fall silent (non-streamed: hang)",
    "invalid-json": "200 with a Content-Type of JSON and a body that is not JSON",
    "broken-sse": "200 text/event-stream whose first event is not JSON (non-streamed: as "
    "invalid-json)",
    "broken-mid-stream": "stream the first token, then an event that is not JSON",
    "html": "200 text/html with an error page, streamed or not",
}
HANG_S = 3600.0


class Stub:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.served = 0
        # Calls per X-Herd-Priority header value ("" without the header).
        self.priorities: dict[str, int] = {}
        self.lock = threading.Lock()

    def words(self, body: dict[str, Any]) -> list[str]:
        n = min(self.args.tokens, int(body.get("max_tokens") or self.args.tokens))
        return [f"{self.args.name} says:"] + [f" w{i}" for i in range(n - 1)]


def make_handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes: without this, Nagle's algorithm and
            # delayed ACKs add 40 ms to every answer.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send_json(self, status: int, value: dict[str, Any]) -> None:
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send_json(200, {"status": "ready"})
            elif self.path == "/stats":
                self._send_json(200, {"served": stub.served, "name": stub.args.name,
                                      "priorities": stub.priorities})  # fmt: skip
            else:
                self._send_json(404, {"error": {"message": "not found"}})

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _send_raw(self, content_type: str, data: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _first_token_then(self, tail: bytes | None) -> None:
            """Stream headers and one well-formed token event, then tail (None: silence)."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            first = {"id": "stub", "object": "chat.completion.chunk", "created": 0,
                     "model": stub.args.alias,
                     "choices": [{"index": 0, "delta": {"content": "first"},
                                  "finish_reason": None}]}  # fmt: skip
            self._chunk(b"data: " + json.dumps(first).encode() + b"\n\n")
            if tail is None:
                time.sleep(HANG_S)
            else:
                self._chunk(tail)
                self._chunk(b"")

        def _misbehave(self, stream: bool) -> bool:
            """Answer as --mode says; False when the mode is to answer properly."""
            mode = stub.args.mode
            if mode == "ok":
                return False
            if mode == "hang" or (mode == "hang-mid-stream" and not stream):
                time.sleep(HANG_S)
            elif mode == "hang-mid-stream":
                self._first_token_then(None)
            elif mode == "invalid-json" or (mode == "broken-sse" and not stream):
                self._send_raw("application/json", b'{"choices": [{"message": tru')
            elif mode == "broken-sse":
                self._send_raw("text/event-stream", b"data: {not json at all\n\n")
            elif mode == "broken-mid-stream":
                if stream:
                    self._first_token_then(b'data: {"choices": [tru\n\n')
                else:
                    self._send_raw("application/json", b"<<garbage>>")
            elif mode == "html":
                self._send_raw("text/html", b"<html><body>502 Bad Gateway</body></html>")
            return True

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            chat = self.path == "/v1/chat/completions"
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                self._send_json(404, {"error": {"message": "not found"}})
                return
            if body.get("max_tokens") == 999_999:
                self._send_json(400, {"error": {"message": "max_tokens too large", "type": "x"}})
                return
            with stub.lock:
                stub.served += 1
                priority = self.headers.get("X-Herd-Priority", "")
                stub.priorities[priority] = stub.priorities.get(priority, 0) + 1
            if self._misbehave(bool(body.get("stream"))):
                return
            words = stub.words(body)
            delay = stub.args.token_delay_ms / 1000
            n = len(words)
            # Fewer words than the stub says when max_tokens stopped it: cut, as llama.cpp says.
            finish = "length" if n < stub.args.tokens else "stop"
            usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
            timings = {"queue_ms": 1.5, "ttft_ms": delay * 1000 + 2, "tokens_per_second": 123.0}
            rid = f"stub-{uuid.uuid4().hex}"
            obj = "chat.completion" if chat else "text_completion"
            if not body.get("stream"):
                time.sleep(delay * len(words))
                text = "".join(words)
                choice: dict[str, Any] = (
                    {"index": 0, "message": {"role": "assistant", "content": text}}
                    if chat
                    else {"index": 0, "text": text}
                )
                choice["finish_reason"] = finish
                answer = {"id": rid, "object": obj, "created": int(time.time()),
                          "model": stub.args.alias, "choices": [choice], "usage": usage,
                          "timings": timings}  # fmt: skip
                self._send_json(200, answer)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def event(choice: dict[str, Any], **extra: Any) -> None:
                chunk = {"id": rid, "object": obj + ".chunk" if chat else obj,
                         "created": int(time.time()), "model": stub.args.alias,
                         "choices": [{"index": 0, **choice}], **extra}  # fmt: skip
                self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")

            if chat:
                event({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})
            for word in words:
                time.sleep(delay)
                if chat:
                    event({"delta": {"content": word}, "finish_reason": None})
                else:
                    event({"text": word, "finish_reason": None})
            final = {"delta": {}} if chat else {"text": ""}
            event({**final, "finish_reason": finish}, usage=usage, timings=timings)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

    return Handler


def heartbeat(url: str, worker_id: int, stop: threading.Event) -> None:
    conn = None
    while not stop.wait(0.5):
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(url, autocommit=True, connect_timeout=2)
            conn.execute("UPDATE workers SET heartbeat_at = now() WHERE id = %s", (worker_id,))
        except psycopg.Error:
            conn = None  # the database is away: try again next beat, like a real worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--deployment-id", type=int)
    parser.add_argument("--model-id", type=int)
    parser.add_argument("--name", default="stub")
    parser.add_argument("--tokens", type=int, default=5)
    parser.add_argument("--token-delay-ms", type=float, default=0)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--mode", choices=sorted(MODES), default="ok", help="how to misbehave")
    args = parser.parse_args()
    stub = Stub(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(stub))
    server.daemon_threads = True
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with psycopg.connect(args.db_url, autocommit=True) as conn:
        worker_id = conn.execute(
            "INSERT INTO workers (deployment_id, model_id, host, url, pid, state, alias, "
            "slots_total, slots_busy, queue_length) VALUES (%s, %s, '127.0.0.1', %s, %s, 'ready', "
            "%s, %s, 0, 0) RETURNING id",
            (args.deployment_id, args.model_id, url, os.getpid(), args.alias, args.slots),
        ).fetchone()[0]  # type: ignore[index]
    stop = threading.Event()
    threading.Thread(target=heartbeat, args=(args.db_url, worker_id, stop), daemon=True).start()

    def on_term(signum: int, frame: Any) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"READY {worker_id} {url}", flush=True)
    server.serve_forever()
    try:
        with psycopg.connect(args.db_url, autocommit=True, connect_timeout=2) as conn:
            conn.execute("DELETE FROM workers WHERE id = %s", (worker_id,))
    except psycopg.Error:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
