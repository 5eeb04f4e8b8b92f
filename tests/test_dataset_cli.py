"""`herd dataset build/list/show/distill` as a user runs them: real processes, database and
files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from app.batches.service import cancel_batch
from app.datasets.build import BuildSpec
from app.datasets.cleaning import CleaningOptions
from app.datasets.job import DatasetJobRequest
from app.datasets.rows import DatasetKind
from app.datasets.selection import LogSelection, Rating
from app.datasets.splits import SplitRatios
from app.datasets.teacher import GenerationSettings
from app.db.database import Database
from app.jobs.store import JobStore
from tests.analytics_data import insert_messages, insert_requests, request_row
from tests.conftest import free_port, run_herd
from tests.gateway_harness import wait_for

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _add(db: Database, n: int) -> None:
    rows = [request_row(T0, alias="chat", session_id=f"s{i // 2}") for i in range(n)]
    insert_requests(db.engine, rows)
    insert_messages(
        db.engine,
        [
            {
                "request_id": r["id"],
                "prompt": [
                    {
                        "role": "user",
                        "content": f"question {i} on a topic of its own " * (1 + i % 3),
                    }
                ],
                "response": f"answer {i}",
            }
            for i, r in enumerate(rows)
        ],
    )


def test_build_list_show(database: Database, herd_env: dict[str, str]) -> None:
    _add(database, 20)
    built = run_herd(
        "dataset",
        "build",
        "cli-set",
        "--alias",
        "chat",
        "--split",
        "0.5,0.25,0.25",
        "--seed",
        "3",
        "--no-near-dedup",
        "--by",
        "olivia",
        env=herd_env,
    )
    assert built.returncode == 0, built.stderr
    assert "dataset 'cli-set' (sft): 20 rows" in built.stdout
    assert "exact_duplicate" in built.stdout
    home = Path(herd_env["HERD_HOME"])
    files = sorted(p.name for p in (home / "datasets" / "cli-set").iterdir())
    assert files == [
        "README.md",
        "card.json",
        "eval",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    listed = run_herd("dataset", "list", env=herd_env)
    assert listed.returncode == 0 and "cli-set" in listed.stdout and "olivia" in listed.stdout
    shown = run_herd("dataset", "show", "cli-set", "--json", env=herd_env)
    card = json.loads(shown.stdout)
    assert card["seed"] == 3 and card["source"]["aliases"] == ["chat"]
    assert sum(card["split_rows"].values()) == 20 and card["split_rows"]["train"] == 10
    again = run_herd("dataset", "build", "cli-set", env=herd_env)
    assert again.returncode == 2 and "exists already" in again.stderr
    missing = run_herd("dataset", "show", "nope", env=herd_env)
    assert missing.returncode == 1 and "no dataset named 'nope'" in missing.stderr


def test_bad_upload_and_empty_selection_write_nothing(
    database: Database, herd_env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    run = run_herd("dataset", "build", "x", "--from-file", str(bad), env=herd_env)
    assert run.returncode == 2
    assert "line 2: not valid JSON" in run.stderr and "nothing was written" in run.stderr
    empty = run_herd("dataset", "build", "x", "--rating", "up", env=herd_env)
    assert empty.returncode == 2 and "matched no usable requests" in empty.stderr
    assert not (Path(herd_env["HERD_HOME"]) / "datasets" / "x").exists()
    assert "no datasets yet" in run_herd("dataset", "list", env=herd_env).stdout


def test_build_from_a_csv_file(herd_env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "pairs.csv"
    good.write_text(
        'prompt,response,session_id\n"Hi, what is 2+2?",4,a\n"And 3+3?",6,a\nName a fruit,Apple,\n'
    )
    run = run_herd(
        "dataset", "build", "from-csv", "--from-file", str(good), "--split", "1,0,0", env=herd_env
    )
    assert run.returncode == 0, run.stderr
    lines = (Path(herd_env["HERD_HOME"]) / "datasets" / "from-csv" / "train.jsonl").read_text()
    rows = [json.loads(x) for x in lines.splitlines()]
    assert sorted(
        (r["messages"][0]["content"], r["messages"][1]["content"], r["session_id"], r["source"])
        for r in rows
    ) == [
        ("And 3+3?", "6", "a", "upload"),
        ("Hi, what is 2+2?", "4", "a", "upload"),
        ("Name a fruit", "Apple", "line-4", "upload"),
    ]


def test_a_dataset_job_request_keeps_every_setting_through_its_params() -> None:
    request = DatasetJobRequest(
        BuildSpec(
            "set",
            "olga",
            DatasetKind.AUGMENT,
            CleaningOptions(languages=("en", "de"), near_dup_threshold=0.7, redact=False),
            SplitRatios(0.5, 0.25, 0.25),
            seed=7,
        ),
        GenerationSettings("para", max_tokens=9, temperature=0.9, seed=3, system_prompt="S"),
        n=4,
        selection=LogSelection(
            start=T0,
            end=datetime(2026, 3, 2, tzinfo=UTC),
            aliases=("chat",),
            model_ids=(1,),
            rating=Rating.DOWN,
            tags=("bad",),
            include_synthetic=True,
            limit=50,
        ),
        resume="batch_0123",
    )
    params = json.loads(json.dumps(request.params()))  # as the jobs row stores them
    assert params["target"] == "set"
    assert DatasetJobRequest.of(params) == request
    upload = DatasetJobRequest(request.spec, request.generation, upload=Path("/x/p.jsonl"))
    assert DatasetJobRequest.of(json.loads(json.dumps(upload.params()))) == upload


def test_distill_from_a_file_runs_as_a_job_and_a_bad_file_starts_none(
    database: Database, herd_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **herd_env,
        # No gateway listens there: the batch cannot move, the job waits for it.
        "HERD_GATEWAY_URL": f"http://127.0.0.1:{free_port()}",
        "HERD_JOB_HEARTBEAT_S": "0.2",
        "HERD_BATCH_GIVE_UP_S": "60",
    }
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": \n')
    refused = run_herd("dataset", "distill", "d", "--teacher", "chat", "--from-file", str(bad),
                       env=env)  # fmt: skip
    assert refused.returncode == 2 and "line 2" in refused.stderr, refused.stderr
    jobs = JobStore(database.engine)
    assert jobs.recent("dataset") == []

    good = tmp_path / "prompts.jsonl"
    good.write_text(
        "".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(3))
    )
    started = run_herd("dataset", "distill", "d", "--teacher", "chat", "--from-file", str(good),
                       "--no-wait", env=env)  # fmt: skip
    assert started.returncode == 0, started.stderr
    [job] = jobs.recent("dataset")
    assert f"started job {job.id} (distill dataset 'd')" in started.stdout
    try:
        # The job read the file and sent its three prompts as one batch to the teacher.
        wait_for(lambda: "batch batch_" in (jobs.get(job.id).log_tail or ""), timeout_s=60)
        with database.engine.connect() as conn:
            lines = conn.execute(text("SELECT body FROM batch_requests ORDER BY line")).scalars()
            asked = [body["messages"][-1]["content"] for body in lines]
        assert asked == [f"Question number {i}?" for i in range(3)]
        assert jobs.get(job.id).state == "running"
    finally:
        with database.engine.connect() as conn:
            batch_ids = conn.execute(text("SELECT id FROM batches")).scalars().all()
        for batch_id in batch_ids:
            cancel_batch(database.engine, batch_id)
    wait_for(lambda: jobs.get(job.id).finished, timeout_s=60, step_s=0.2)
    assert jobs.get(job.id).state == "failed"
    wait_for(lambda: all(j.finished for j in jobs.recent("batch")), timeout_s=60, step_s=0.2)
    assert good.exists()  # the operator's own file is read, never removed
