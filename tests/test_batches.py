"""The Batch API end to end with the official openai client: a gateway, a real worker on the
demo model, the batch runner as a job process, real PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import text

from app.batches.launch import MAX_RUNNER_STARTS, ensure_runner
from app.batches.service import batch_results, create_batch, wait_batch
from app.batches.store import BatchStore
from app.config import Settings
from app.control.keys import ApiKeys, KeyPolicy
from app.db.database import Database
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from tests.batch_harness import (
    ALIAS,
    batch_gateway,
    chat_line,
    openai_client,
    parse_jsonl,
    start_demo_worker,
    write_jsonl,
)
from tests.batch_harness import (
    wait_batch as wait_openai_batch,
)
from tests.conftest import run_herd
from tests.gateway_harness import add_deployment, served_alias, wait_for
from tests.worker_process import WorkerLauncher


def test_openai_client_runs_a_batch_with_per_line_errors(
    tmp_path: Path,
    db_url: str,
    database: Database,
    models_dir: Path,
    worker_launcher: WorkerLauncher,
) -> None:
    start_demo_worker(worker_launcher, database, models_dir)
    lines = [chat_line(f"ok-{i}", f"Count to {i}") for i in range(4)]
    lines.append(chat_line("unknown-model", model="no-such-alias"))
    lines.append(chat_line("other-endpoint", url="/v1/completions"))
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    with batch_gateway(tmp_path, db_url) as gateway:
        gateway.wait_workers(1)
        client = openai_client(gateway.v1)
        uploaded = client.files.create(file=source.open("rb"), purpose="batch")
        assert uploaded.bytes == source.stat().st_size and uploaded.purpose == "batch"
        assert client.files.retrieve(uploaded.id).filename == "in.jsonl"
        assert client.files.content(uploaded.id).content == source.read_bytes()

        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"purpose": "test"},
        )
        assert batch.status in ("validating", "in_progress")
        batch = wait_openai_batch(client, batch.id)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (
            batch.request_counts.total,
            batch.request_counts.completed,
            batch.request_counts.failed,
        ) == (6, 4, 2)
        assert batch.metadata == {"purpose": "test"}
        assert batch.output_file_id and batch.error_file_id

        output = parse_jsonl(client.files.content(batch.output_file_id).text)
        errors = parse_jsonl(client.files.content(batch.error_file_id).text)
        assert sorted(o["custom_id"] for o in output) == [f"ok-{i}" for i in range(4)]
        for row in output:
            assert row["error"] is None and row["response"]["status_code"] == 200
            body = row["response"]["body"]
            assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 2
            assert row["response"]["request_id"] == body["id"]
        by_id = {e["custom_id"]: e for e in errors}
        assert sorted(by_id) == ["other-endpoint", "unknown-model"]
        assert by_id["unknown-model"]["response"]["status_code"] == 404
        assert by_id["other-endpoint"]["response"] is None
        assert by_id["other-endpoint"]["error"]["code"] == "invalid_url"
        # Every custom_id exactly once over both files.
        assert Counter(r["custom_id"] for r in output + errors) == Counter(
            line["custom_id"] for line in lines
        )

        with pytest.raises(openai.ConflictError, match="completed"):
            client.batches.cancel(batch.id)
        listed = client.batches.list(limit=10)
        assert [b.id for b in listed.data] == [batch.id]
        listed_files = {f.id: f.purpose for f in client.files.list()}
        assert listed_files == {
            uploaded.id: "batch",
            batch.output_file_id: "batch_output",
            batch.error_file_id: "batch_errors",
        }
        assert [f.id for f in client.files.list(purpose="batch")] == [uploaded.id]
        assert client.files.delete(uploaded.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(uploaded.id)

    # The request log marks the batch's calls; no session, so no conversation counts them.
    with database.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, session_id FROM requests WHERE batch_id = :b"), {"b": batch.id}
        ).all()
        hourly = conn.execute(
            text("SELECT sum(requests) FROM requests_hourly WHERE traffic_class = 'batch'")
        ).scalar()
    assert Counter(r.status for r in rows) == Counter({"ok": 4, "rejected": 1})
    assert all(r.session_id is None for r in rows)
    assert hourly == 5


def test_bad_files_are_refused_with_line_numbers(tmp_path: Path, db_url: str) -> None:
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            chat_line("a"),
            "{not json",
            chat_line("b", url="/v1/images/generations"),
            {**chat_line("c"), "method": "GET"},
            chat_line("a"),
            "",
            "[1, 2]",
            {**chat_line("d"), "body": {**chat_line("d")["body"], "stream": True}},
            chat_line("e"),
        ],
    )
    with batch_gateway(tmp_path, db_url, batch_file_max_bytes=4000) as gateway:
        client = openai_client(gateway.v1)
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(file=bad.open("rb"), purpose="batch")
        message = refused.value.message
        assert "(6 errors)" in message
        for expected in (
            "line 2: not valid JSON",
            "line 3: unknown endpoint '/v1/images/generations'",
            "line 4: method 'GET' does not match url /v1/chat/completions",
            "line 5: custom_id 'a' repeats line 1",
            "line 7: not a JSON object",
            "line 8: body.stream is not supported",
        ):
            assert expected in message, message

        empty = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
        with pytest.raises(openai.BadRequestError, match="the file is empty"):
            client.files.create(file=empty.open("rb"), purpose="batch")

        big = write_jsonl(
            tmp_path / "big.jsonl", [chat_line(f"x{i}", "y" * 100) for i in range(40)]
        )
        assert big.stat().st_size > 4000
        with pytest.raises(openai.APIStatusError) as too_big:
            client.files.create(file=big.open("rb"), purpose="batch")
        assert too_big.value.status_code == 413 and "4000 bytes" in too_big.value.message

        good = write_jsonl(tmp_path / "good.jsonl", [chat_line("only")])
        with pytest.raises(openai.BadRequestError, match="purpose"):
            client.files.create(file=good.open("rb"), purpose="fine-tune")
        uploaded = client.files.create(file=good.open("rb"), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/images",  # type: ignore[arg-type]
                completion_window="24h",
            )
        with pytest.raises(openai.BadRequestError, match="completion_window"):
            client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h"
            )  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")
        # Ids and filters PostgreSQL would refuse (a NUL byte) name nothing: 404 or an empty
        # list, never the 503 of a database error (schemathesis found `after=%00`).
        base, auth = gateway.v1.rstrip("/"), {"Authorization": "Bearer none"}
        for path in ("/batches?after=%00", "/batches/batch_%00", "/files/file-%00",
                     "/files/file-%00/content"):  # fmt: skip
            answer = httpx.get(base + path, headers=auth, timeout=10)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["code"] in ("batch_not_found", "file_not_found")
        listed = httpx.get(base + "/files?purpose=%00", headers=auth, timeout=10)
        assert listed.status_code == 200 and listed.json()["data"] == [], listed.text
        # Nothing of the refused files stays behind: only the good upload is on disk.
        files = sorted(p.name for p in (tmp_path / "herd-home" / "files").iterdir())
        assert files == [f"{uploaded.id}.jsonl"]


def test_batch_marking_needs_the_runner_credential(tmp_path: Path, db_url: str) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [chat_line("one", model="nobody-serves-this")])
    with batch_gateway(tmp_path, db_url) as gateway:
        client = openai_client(gateway.v1)
        uploaded = client.files.create(file=source.open("rb"), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for headers in (
            {"X-Herd-Batch": batch.id},
            {"X-Herd-Batch": batch.id, "X-Herd-Batch-Token": "guess"},
        ):
            answer = httpx.post(
                f"{gateway.v1}/chat/completions",
                headers=headers,
                json=chat_line("x")["body"],
                timeout=10,
            )
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "batch_marking_refused"
        done = wait_openai_batch(client, batch.id, timeout_s=60)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.failed == 1


def test_python_api_and_the_herd_batch_commands(
    tmp_path: Path,
    db_url: str,
    database: Database,
    models_dir: Path,
    worker_launcher: WorkerLauncher,
    herd_env: dict[str, str],
) -> None:
    start_demo_worker(worker_launcher, database, models_dir)
    with batch_gateway(tmp_path, db_url) as gateway:
        gateway.wait_workers(1)
        settings = Settings(
            home=tmp_path / "herd-home", database_url=db_url, gateway_url=gateway.url
        )
        bodies = [
            {"messages": [{"role": "user", "content": f"Hi {i}"}], "max_tokens": 2}
            for i in range(3)
        ]
        batch_id = create_batch(
            settings,
            database.engine,
            alias=ALIAS,
            bodies=bodies,
            custom_ids=["a", "b", "c"],
            created_by="test",
        )
        seen: list[int] = []
        view = wait_batch(
            database.engine,
            batch_id,
            timeout_s=240,
            poll_s=0.5,
            on_progress=lambda v: seen.append(v.done),
        )
        assert view.status == "completed" and (view.total, view.completed) == (3, 3)
        assert seen[-1] == 3 and seen == sorted(seen)
        results = batch_results(database.engine, batch_id)
        assert sorted(results) == ["a", "b", "c"]
        assert all(r.ok and r.status_code == 200 and r.text is not None for r in results.values())
        with pytest.raises(ValueError, match="custom ids"):
            create_batch(settings, database.engine, alias=ALIAS, bodies=bodies, custom_ids=["x"])

        # The CLI: submit with --alias (the lines name another model), follow, download.
        env = {**herd_env, "HERD_GATEWAY_URL": gateway.url}
        lines = [chat_line(f"cli-{i}", model="whatever") for i in range(3)]
        source = write_jsonl(tmp_path / "cli.jsonl", [*lines, "{broken"])
        refused = run_herd("batch", "submit", str(source), "--alias", ALIAS, env=env)
        assert refused.returncode == 1 and "line 4: not valid JSON" in refused.stderr
        source = write_jsonl(tmp_path / "cli.jsonl", lines)
        done = run_herd("batch", "submit", str(source), "--alias", ALIAS, env=env, timeout_s=300)
        assert done.returncode == 0, done.stderr
        cli_batch = done.stdout.split()[1]
        assert "completed, 3/3 done (3 completed, 0 failed)" in done.stdout
        assert "line/s" in done.stderr or "3/3" in done.stderr  # the tqdm bar
        status = run_herd("batch", "status", cli_batch, "--json", env=env)
        assert json.loads(status.stdout)["request_counts"] == {
            "total": 3,
            "completed": 3,
            "failed": 0,
        }
        out = tmp_path / "downloads"
        fetched = run_herd("batch", "download", cli_batch, "-o", str(out), env=env)
        assert fetched.returncode == 0, fetched.stderr
        rows = parse_jsonl((out / f"{cli_batch}_output.jsonl").read_text())
        assert sorted(r["custom_id"] for r in rows) == ["cli-0", "cli-1", "cli-2"]
        assert all(r["response"]["body"]["model"] == ALIAS for r in rows)
        assert (out / f"{cli_batch}_errors.jsonl").read_text() == ""
        listed = run_herd("batch", "list", env=env)
        assert cli_batch in listed.stdout and batch_id in listed.stdout
        cancel = run_herd("batch", "cancel", cli_batch, env=env)
        assert cancel.returncode == 1 and "only a validating or in_progress" in cancel.stderr


def test_batch_lines_reach_workers_marked_and_count_against_the_owner_key(
    tmp_path: Path, db_url: str
) -> None:
    with served_alias(db_url, tmp_path, "stubby", batch_watch_s=0.5) as served:
        keys = ApiKeys(served.database.engine)
        owner = keys.create("owner").key
        scoped = keys.create("scoped", policy=KeyPolicy(scopes=("elsewhere",))).key

        # The gateway loads keys with its routing state: wait until it knows them. Until then
        # no key exists for it, so any token passes as anonymous: wait for a bogus one to fail.
        def status(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.get(f"{served.url}/v1/models", headers=headers, timeout=5).status_code

        wait_for(lambda: status("not-a-key") == 401 and status(owner) == status(scoped) == 200)
        source = write_jsonl(
            tmp_path / "in.jsonl",
            [chat_line(f"s{i}", f"Hello {i}", model="stubby") for i in range(3)],
        )
        runs = {}
        for name, key in (("owner", owner), ("scoped", scoped)):
            client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0)
            uploaded = client.files.create(file=source.open("rb"), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            runs[name] = (client, wait_openai_batch(client, batch.id, timeout_s=60))
        owner_client, owner_batch = runs["owner"]
        scoped_client, scoped_batch = runs["scoped"]
        assert owner_batch.request_counts.completed == 3
        # The scoped key may not call "stubby": its batch lines are refused like its calls.
        assert scoped_batch.request_counts.failed == 3
        errors = parse_jsonl(scoped_client.files.content(scoped_batch.error_file_id).text)
        assert {e["response"]["status_code"] for e in errors} == {403}
        # A batch is its owner's: another key neither sees nor cancels it.
        with pytest.raises(openai.NotFoundError):
            scoped_client.batches.retrieve(owner_batch.id)
        with pytest.raises(openai.NotFoundError):
            scoped_client.files.content(owner_batch.output_file_id)
        assert [b.id for b in owner_client.batches.list().data] == [owner_batch.id]
        # Interactive calls go without the priority header; batch lines with it.
        owner_client.chat.completions.create(
            model="stubby", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        stats = httpx.get(f"{served.stub.url}/stats", timeout=5).json()
        assert stats["priorities"] == {"batch": 3, "": 1}
        owner_id = keys.active("owner").id  # type: ignore[union-attr]

        def logged() -> Counter[tuple[str | None, int | None]]:
            with served.database.engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT batch_id, api_key_id FROM requests WHERE alias = 'stubby' "
                        "AND api_key_id = :owner"
                    ),
                    {"owner": owner_id},
                ).all()
            return Counter((r.batch_id, r.api_key_id) for r in rows)

        # The gateway writes its request log in the background: wait for the live call's row.
        wait_for(lambda: sum(logged().values()) >= 4)
        by_batch = logged()
        assert by_batch[(owner_batch.id, owner_id)] == 3 and by_batch[(None, owner_id)] == 1
        # Pages of the list: newest first, `after` the last id seen.
        httpx_headers = {"Authorization": f"Bearer {owner}"}
        second = owner_client.batches.create(
            input_file_id=owner_client.files.create(file=source.open("rb"), purpose="batch").id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        page = httpx.get(f"{served.url}/v1/batches?limit=1", headers=httpx_headers).json()
        assert [b["id"] for b in page["data"]] == [second.id] and page["has_more"]
        rest = httpx.get(
            f"{served.url}/v1/batches?limit=1&after={second.id}", headers=httpx_headers
        ).json()
        assert [b["id"] for b in rest.get("data", [])] == [owner_batch.id], rest
        assert not rest["has_more"]
        wait_openai_batch(owner_client, second.id, timeout_s=60)


def test_expired_batch_marks_unsent_lines_and_a_dying_runner_fails_the_batch(
    tmp_path: Path, db_url: str, database: Database
) -> None:
    settings = Settings(
        home=tmp_path / "herd-home",
        database_url=db_url,
        gateway_url="http://127.0.0.1:9",
        job_heartbeat_s=0.2,
    )
    bodies = [{"messages": [{"role": "user", "content": "x"}]} for _ in range(3)]
    expired = create_batch(settings, database.engine, alias=ALIAS, bodies=bodies, start=False)
    with database.engine.begin() as conn:
        conn.execute(
            text("UPDATE batches SET expires_at = now() - interval '1 second' WHERE id = :b"),
            {"b": expired},
        )
    assert ensure_runner(database.engine, settings, expired, None, 0) is not None
    view = wait_batch(database.engine, expired, timeout_s=120, poll_s=0.3)
    assert view.status == "expired" and view.expired_at and (view.total, view.done) == (3, 3)
    results = batch_results(database.engine, expired)
    assert {r.error["code"] for r in results.values()} == {"batch_expired"}
    assert len(BatchStore(database.engine).rendered(expired, "batch_errors")) == 3

    doomed = create_batch(settings, database.engine, alias=ALIAS, bodies=bodies, start=False)
    assert ensure_runner(database.engine, settings, doomed, None, MAX_RUNNER_STARTS) is None
    failed = BatchStore(database.engine).get(doomed)
    assert failed.status == "failed" and failed.failed_at
    assert failed.errors["data"][0]["code"] == "runner_failed"


def test_embeddings_batch_on_a_real_embedding_worker(
    tmp_path: Path, db_url: str, database: Database, models_dir: Path,
    worker_launcher: WorkerLauncher,
) -> None:  # fmt: skip
    model = add_demo_model(ModelStore(database.engine, models_dir))
    deployment = add_deployment(database.engine, "embed", model.id)
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE deployments SET embeddings = true WHERE id = :d"),
                     {"d": deployment})  # fmt: skip
    worker = worker_launcher.start(
        "--model", model.name, "--port", "0", "--n-ctx", "512", "--alias", "embed",
        "--deployment-id", str(deployment), "--embeddings",
    )  # fmt: skip
    worker.wait_ready(timeout_s=180)
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "embed", "input": f"text number {i}"},
        }
        for i in range(3)
    ]
    source = write_jsonl(tmp_path / "embed.jsonl", lines)
    with batch_gateway(tmp_path, db_url) as gateway:
        gateway.wait_workers(1)
        client = openai_client(gateway.v1)
        uploaded = client.files.create(file=source.open("rb"), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        batch = wait_openai_batch(client, batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 3
        rows = parse_jsonl(client.files.content(batch.output_file_id).text)
        assert sorted(r["custom_id"] for r in rows) == ["e0", "e1", "e2"]
        assert all(len(r["response"]["body"]["data"][0]["embedding"]) == 576 for r in rows)
    with database.engine.connect() as conn:
        logged = (
            conn.execute(text("SELECT endpoint FROM requests WHERE batch_id = :b"), {"b": batch.id})
            .scalars()
            .all()
        )
    assert logged == ["embeddings"] * 3
