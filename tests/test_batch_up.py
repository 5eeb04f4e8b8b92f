"""Done-when of the Batch API: the official openai client runs a 1,000-line batch end to
end against `herd up --demo` (completions of one token, so it fits a shared 2-core box)."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from pathlib import Path

import openai
import pytest

from tests.batch_harness import parse_jsonl, write_jsonl
from tests.conftest import free_port
from tests.test_up import HerdUp

LINES = 1000
pytestmark = pytest.mark.timeout(1800)


def test_openai_client_runs_1000_lines_against_herd_up_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HERD_DATABASE_URL"}
    env.update(
        HERD_HOME=str(tmp_path / "home"),
        HERD_MODELS_DIR=str(tmp_path / "models"),
        HERD_DASHBOARD_PORT=str(free_port()),
        HERD_SUPERVISOR_PORT=str(free_port()),
        HERD_GATEWAY_PORT=str(free_port()),
    )
    up = HerdUp(env, "--demo")
    try:
        output = up.wait_for("herd is up", timeout_s=300)
        gateway = re.search(r"^gateway: +(http\S+)", output, re.MULTILINE)
        assert gateway, output
        client = openai.OpenAI(base_url=gateway.group(1), api_key="none", max_retries=2)
        ids = [f"line-{i:04d}" for i in range(LINES)]
        lines = [
            {"custom_id": cid, "method": "POST", "url": "/v1/completions",
             "body": {"model": "demo", "prompt": f"{i}", "max_tokens": 1, "temperature": 0}}
            for i, cid in enumerate(ids)
        ]  # fmt: skip
        source = write_jsonl(tmp_path / "thousand.jsonl", lines)
        started = time.monotonic()
        uploaded = client.files.create(file=source.open("rb"), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        )
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            assert time.monotonic() - started < 1500, batch
            time.sleep(2)
            batch = client.batches.retrieve(batch.id)
        elapsed = time.monotonic() - started
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.completed) == (LINES, LINES)
        assert batch.output_file_id is not None and batch.error_file_id is None
        output_rows = parse_jsonl(client.files.content(batch.output_file_id).text)
        assert Counter(r["custom_id"] for r in output_rows) == Counter(ids)
        assert all(r["response"]["status_code"] == 200 for r in output_rows)
        print(f"{LINES} lines in {elapsed:.1f} s ({LINES / elapsed:.1f} lines/s)")
        assert up.interrupt() == 0
    finally:
        up.kill()
