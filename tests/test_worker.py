"""`herd worker` as a real process on the SmolLM2 demo model: registration, /health, the
OpenAI endpoints (streaming and not), queueing, 429, disconnects, failures, shutdown."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.db.database import Database
from app.engine.factory import STEP_TOKENS
from app.engine.slots import reusable
from app.openai_api.completions import ChatFormat, ResponseFormat, TextFormat
from app.openai_api.sse import sse
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model, find_demo_model
from tests.worker_process import WorkerLauncher, WorkerProcess

MAX_QUEUE = 1


@pytest.fixture(scope="module")
def served(
    pg_server: Any, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, str]]:
    """One worker shared by the HTTP tests (each test starts with it idle)."""
    from tests.conftest import with_database

    name = pg_server.create_database(template=migrated_template)
    launcher = WorkerLauncher(with_database(pg_server.url, name), tmp_path_factory.mktemp("w"))
    try:
        worker = launcher.start(
            "--model", str(find_demo_model().path), "--alias", "smol",
            "--n-gpu-layers", "-1", "--max-queue", str(MAX_QUEUE), "--log-path", "/tmp/w.log",
            "--parallel", "1",  # these tests are about one slot and its queue
        )  # fmt: skip
        yield worker, worker.wait_ready()
    finally:
        launcher.kill_all()
        pg_server.drop_database(name)


@pytest.fixture
def url(served: tuple[WorkerProcess, str]) -> str:
    _worker, base = served
    wait_for(lambda: health(base)["slots_busy"] == 0 and health(base)["queue_length"] == 0)
    return base


def health(base: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{base}/health", timeout=5).json()
    return body


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0, step_s: float = 0.02) -> float:
    """Seconds until check() held; fails the test after timeout_s."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(step_s)
    return time.monotonic() - started


def chat_body(content: str = "Say hi.", **extra: Any) -> dict[str, Any]:
    return {"model": "smol", "messages": [{"role": "user", "content": content}], **extra}


def long_body(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return chat_body("Tell me a long story.", max_tokens=max_tokens, ignore_eos=True, **extra)


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any] | str]:
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: ") :]
        yield payload if payload == "[DONE]" else json.loads(payload)


def test_worker_registers_ready_with_offload_report(served: tuple[WorkerProcess, str]) -> None:
    worker, base = served
    body = health(base)
    assert body["status"] == "ready" and body["alias"] == "smol"
    assert body["pid"] == worker.pid and body["n_ctx"] == 4096
    # /health turns ready a moment before the row is written with it: wait for the row.
    deadline = time.monotonic() + 10
    row = worker.row()
    while (row is None or row["state"] != "ready") and time.monotonic() < deadline:
        time.sleep(0.05)
        row = worker.row()
    assert row is not None
    assert row["state"] == "ready" and row["url"] == base and row["alias"] == "smol"
    assert row["host"] and row["log_path"] == "/tmp/w.log" and row["error"] is None
    assert row["slots_total"] == 1 and row["rss_bytes"] > 50 * 1024 * 1024
    # This CPU-only build: asking for every layer is allowed, and none is offloaded.
    assert row["gpu_offload_supported"] is body["gpu_offload_supported"]
    if not row["gpu_offload_supported"]:
        assert row["n_gpu_layers_offloaded"] == 0 and row["vram_bytes"] is None
    first_beat = row["heartbeat_at"]
    wait_for(lambda: worker.row()["heartbeat_at"] > first_beat, timeout_s=2.5)  # type: ignore[index]


def test_chat_completion_streams_tokens(url: str) -> None:
    body = chat_body("Name three fruits.", stream=True, max_tokens=16, temperature=0)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["model"] == "smol"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]]
    assert len(pieces) >= 2 and "".join(pieces).strip()
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    usage, timings = final["usage"], final["timings"]
    assert usage["prompt_tokens"] > 5 and len(pieces) <= usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert timings["ttft_ms"] > 0 and timings["tokens_per_second"] > 0
    assert timings["queue_ms"] >= 0


def test_non_stream_chat_and_completion_carry_usage_and_timings(url: str) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", json=long_body(8), timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "smol"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8 and body["usage"]["prompt_tokens"] > 5
    timings = body["timings"]
    assert set(timings) >= {"ttft_ms", "tokens_per_second", "queue_ms"}
    assert timings["ttft_ms"] >= timings["queue_ms"] and timings["tokens_per_second"] > 0

    text_body = {"prompt": "1, 2, 3,", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    response = httpx.post(f"{url}/v1/completions", json=text_body, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] == 5 and body["timings"]["ttft_ms"] > 0

    models = httpx.get(f"{url}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["smol"]


def test_seed_makes_sampling_repeatable(url: str) -> None:
    def sample() -> str:
        body = chat_body("Write a word.", temperature=1.0, seed=1234, max_tokens=10)
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        return str(response.json()["choices"][0]["message"]["content"])

    assert sample() == sample()


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "JSON object"),
        ({"messages": "hi"}, 400, "messages"),
        (chat_body(temperature="hot"), 400, "temperature"),
        (chat_body(max_tokens=-5), 400, "max_tokens"),
        ({"model": "smol", "messages": []}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        (chat_body(content=[{"type": "image_url", "image_url": {}}]), 400, "image_url"),
        (chat_body(content="hello " * 5000), 400, "context window"),
    ],
)
def test_bad_input_is_a_clear_4xx(url: str, payload: Any, status: int, needle: str) -> None:
    if isinstance(payload, bytes):
        headers = {"content-type": "application/json"}
        response = httpx.post(
            f"{url}/v1/chat/completions", content=payload, headers=headers, timeout=30
        )
    else:
        response = httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"


def test_two_requests_on_one_slot_queue_rather_than_fail(url: str) -> None:
    results: list[httpx.Response] = []

    def call() -> None:
        results.append(
            httpx.post(f"{url}/v1/chat/completions", json=long_body(40, temperature=0), timeout=60)
        )

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
    timings = sorted((r.json()["timings"] for r in results), key=lambda t: t["queue_ms"])
    first, second = timings
    # One waited while the other generated its 40 tokens.
    assert second["queue_ms"] >= 0.5 * (first["total_ms"] - first["queue_ms"])
    assert all(r.json()["usage"]["completion_tokens"] == 40 for r in results)


def test_full_queue_answers_429_with_retry_after(url: str) -> None:
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST", f"{url}/v1/chat/completions", json=long_body(2000, stream=True)
        ) as running,
    ):
        lines = running.iter_lines()
        assert next(lines).startswith("data: ")  # the slot is busy now
        queued: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: queued.append(
                httpx.post(f"{url}/v1/chat/completions", json=long_body(4), timeout=60)
            )
        )
        waiter.start()
        wait_for(lambda: health(url)["queue_length"] == MAX_QUEUE)
        refused = httpx.post(f"{url}/v1/chat/completions", json=long_body(4), timeout=10)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
    # Leaving the stream cancels it, and the queued request gets the slot.
    waiter.join(timeout=20)
    assert queued and queued[0].status_code == 200


def test_client_disconnect_frees_the_slot(url: str) -> None:
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST", f"{url}/v1/chat/completions", json=long_body(3000, stream=True)
        ) as response,
    ):
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        assert health(url)["slots_busy"] == 1
    # 3000 tokens take far longer than this on any machine this runs on.
    freed_after = wait_for(lambda: health(url)["slots_busy"] == 0, timeout_s=3.0)
    assert freed_after < 3.0
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/chat/completions", json=long_body(4), timeout=30)
    assert response.status_code == 200 and response.json()["timings"]["queue_ms"] < 100
    assert time.monotonic() - started < 5
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert re.search(r'herd_worker_requests_total\{[^}]*outcome="cancelled"\} [1-9]', metrics)


METRIC_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$'
)


def test_metrics_are_valid_prometheus_text(url: str) -> None:
    httpx.post(f"{url}/v1/chat/completions", json=long_body(6), timeout=30)
    response = httpx.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        match = METRIC_LINE.match(line)
        assert match, f"not exposition format: {line!r}"
        value = float(match.group(4))
        assert not math.isnan(value)
        samples[match.group(1) + (match.group(2) or "")] = value
    for name in ("herd_worker_ttft_seconds", "herd_worker_time_per_output_token_seconds"):
        assert types[name] == "histogram"
        assert samples[f"{name}_count"] >= 1
        assert samples[f'{name}_bucket{{le="+Inf"}}'] == samples[f"{name}_count"]
        buckets = [v for k, v in samples.items() if k.startswith(f"{name}_bucket")]
        assert buckets == sorted(buckets)  # cumulative
    assert (
        types["herd_worker_slots_busy"] == "gauge" and types["herd_worker_queue_length"] == "gauge"
    )
    assert samples["herd_worker_completion_tokens_total"] >= 6
    assert samples['herd_worker_requests_total{endpoint="chat.completions",outcome="ok"}'] >= 1
    assert samples["herd_worker_ready"] == 1


def test_prefix_reuse_is_counted_in_health_and_metrics(url: str) -> None:
    def counters() -> tuple[int, int, float, float]:
        body = health(url)
        text = httpx.get(f"{url}/metrics", timeout=5).text
        samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[0] != "#")
        return (
            body["prompt_tokens_total"],
            body["cached_prompt_tokens_total"],
            float(samples["herd_worker_started_prompt_tokens_total"]),
            float(samples["herd_worker_cached_prompt_tokens_total"]),
        )

    before = counters()
    prompt = "Tell me about rivers. " * 30
    usages = [
        httpx.post(
            f"{url}/v1/chat/completions", json=chat_body(prompt, max_tokens=1), timeout=30
        ).json()["usage"]
        for _ in range(2)
    ]
    after = counters()
    cached = usages[1]["prompt_tokens_details"]["cached_tokens"]
    # The repeat reuses as much of the cached prompt as keeps its output identical to a cold run.
    n = usages[1]["prompt_tokens"]
    assert cached == reusable(n, n, STEP_TOKENS) > 0
    prompt_tokens = usages[0]["prompt_tokens"] + usages[1]["prompt_tokens"]
    cached_both = usages[0]["prompt_tokens_details"]["cached_tokens"] + cached
    assert (after[0] - before[0], after[1] - before[1]) == (prompt_tokens, cached_both)
    assert (after[2] - before[2], after[3] - before[3]) == (prompt_tokens, cached_both)
    assert health(url)["prefix_hit_rate"] == pytest.approx(after[1] / after[0])


def test_refused_gguf_leaves_a_failed_row_and_exits_non_zero(
    worker_launcher: WorkerLauncher, tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    worker = worker_launcher.start("--model", str(tiny_gguf()))
    assert worker.wait_exit(timeout_s=60) != 0
    row = worker.row()
    assert row is not None and row["state"] == "failed"
    assert "tokenizer merges" in row["error"]  # llama.cpp's own reason

    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    worker = worker_launcher.start("--model", str(garbage))
    assert worker.wait_exit(timeout_s=60) != 0
    row = worker.row()
    assert row is not None and row["state"] == "failed"
    assert row["error"].startswith("not a valid GGUF")


def test_unknown_model_name_fails_clearly(worker_launcher: WorkerLauncher) -> None:
    worker = worker_launcher.start("--model", "no-such-model.gguf")
    assert worker.wait_exit(timeout_s=60) == 1
    row = worker.row()
    assert row is not None and row["state"] == "failed" and "no-such-model.gguf" in row["error"]


def test_store_model_by_name_and_sigterm_removes_the_row(
    worker_launcher: WorkerLauncher, database: Database, models_dir: Path
) -> None:
    model = add_demo_model(ModelStore(database.engine, models_dir))
    worker = worker_launcher.start("--model", model.name, "--deployment-id", "")
    assert worker.wait_exit(timeout_s=30) == 2  # argparse: not an integer

    worker = worker_launcher.start("--model", model.name)
    base = worker.wait_ready()
    row = worker.row()
    assert row is not None and row["model_id"] == model.id
    assert row["alias"] == Path(model.name).stem
    assert worker.stop() == 0
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM workers")).scalar_one() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", timeout=2)


def test_database_errors_do_not_stop_heartbeats(
    worker_launcher: WorkerLauncher, database: Database
) -> None:
    worker = worker_launcher.start("--model", str(find_demo_model().path))
    base = worker.wait_ready()
    # No --parallel: 4 slots, as the 135M model's KV caches fit in this host's memory.
    assert health(base)["slots_total"] == 4
    # Take the table away: every heartbeat now fails with a database error.
    with database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE workers RENAME TO workers_away"))
    time.sleep(2.5)
    with database.engine.begin() as conn:
        before = conn.execute(text("SELECT heartbeat_at FROM workers_away")).scalar_one()
        conn.execute(text("ALTER TABLE workers_away RENAME TO workers"))
    assert worker.process.poll() is None and health(base)["status"] == "ready"
    wait_for(lambda: worker.row()["heartbeat_at"] > before, timeout_s=5)  # type: ignore[index]
    assert "could not write the worker row" in worker.log()
    assert worker.stop() == 0


@pytest.mark.parametrize("fmt", [ChatFormat("smol"), TextFormat("smol")])
def test_fast_stream_chunks_equal_the_plain_rendering(fmt: ResponseFormat) -> None:
    # chunk_sse renders the envelope once and splices the text in: it must stay byte-equal.
    for piece in ("hi", 'quote " back\\slash \n newline', "é 漢字 🙂", "", "\x01"):
        assert fmt.chunk_sse(piece) == sse(fmt.chunk(piece))
        assert json.loads(fmt.chunk_sse(piece)[len("data: ") :])["id"] == fmt.id
