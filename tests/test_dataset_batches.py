"""Distillation and augmentation end to end: request-log rows in PostgreSQL, a batch through
the Batch API to a real gateway and a real worker on the SmolLM2 demo model, the dataset."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.batches.service import batch_results
from app.config import Settings
from app.control.accounts import Role
from app.datasets.build import BuildSpec, datasets_root
from app.datasets.cleaning import CleaningOptions
from app.datasets.rows import DatasetError
from app.datasets.run import BatchStillRunning, distill_dataset
from app.datasets.selection import LogSelection, select_from_log
from app.datasets.teacher import GenerationSettings, clean_paraphrase
from app.db.database import Database
from app.jobs.store import JobStore
from tests.batch_harness import ALIAS, batch_gateway, start_demo_worker
from tests.conftest import run_herd, run_page
from tests.gateway_harness import wait_for
from tests.test_datasets import T0, Log
from tests.worker_process import WorkerLauncher

PROMPTS = [
    "What is the capital of France?",
    "What is the capital of France?",  # an exact duplicate prompt: one line, not two
    "Name a colour of the rainbow.",
    "My email is jane@example.com, what is 2 + 2?",
    "Give one word that rhymes with cat.",
]


def _log(database: Database) -> None:
    log = Log(database.engine)
    for i, prompt in enumerate(PROMPTS):
        log.add(
            [{"role": "user", "content": prompt}],
            f"logged answer {i}",
            votes=(-1,),
            session_id=f"s{i}",
        )


def _lines(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(x) for f in sorted(directory.glob("*.jsonl")) for x in f.read_text().splitlines()
    ]


# A worker start, three batches and a page run: more than the default 300 s on a busy machine.
@pytest.mark.timeout(900)
def test_distill_and_augment_through_batches(
    tmp_path: Path,
    db_url: str,
    database: Database,
    models_dir: Path,
    worker_launcher: WorkerLauncher,
    herd_env: dict[str, str],
    dashboard_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _log(database)
    start_demo_worker(worker_launcher, database, models_dir)
    with batch_gateway(tmp_path, db_url) as gateway:
        gateway.wait_workers(1)
        # Batch runners (their own processes) use HERD_GATEWAY_URL when it is set; the
        # dashboard_env fixture set it to a closed port.
        monkeypatch.setenv("HERD_GATEWAY_URL", gateway.url)
        settings = Settings(
            home=tmp_path / "herd-home", database_url=db_url, gateway_url=gateway.url
        )
        root = datasets_root(settings.home_dir)
        # 8 tokens cut most answers: kept here (a cut answer is dropped by default, below).
        teacher = GenerationSettings(ALIAS, max_tokens=8, temperature=0.0, keep_cut=True)
        seen: list[tuple[str, int, int]] = []
        spec = BuildSpec("distilled", "olivia", cleaning=CleaningOptions(near_dedup=False))
        selected = select_from_log(database.engine, LogSelection(rating="down"))
        # The command gives up waiting: the batch goes on, nothing is written ...
        with pytest.raises(BatchStillRunning, match="rerun the same command with --batch") as left:
            distill_dataset(
                settings, database.engine, root, spec, selected, teacher, timeout_s=0.001
            )
        assert not root.exists() or not any(root.iterdir())
        # ... a batch made for another dataset is refused ...
        with pytest.raises(DatasetError, match="was not made for distill dataset 'other'"):
            distill_dataset(
                settings,
                database.engine,
                root,
                replace(spec, name="other"),
                selected,
                teacher,
                resume=left.value.batch_id,
            )
        # ... and a rerun with the batch's id writes the dataset from it.
        info = distill_dataset(
            settings,
            database.engine,
            root,
            spec,
            selected,
            teacher,
            progress=lambda step, done, total: seen.append((step, done, total)),
            timeout_s=240,
            resume=left.value.batch_id,
        )
        assert info.card["teacher"]["batch_id"] == left.value.batch_id
        assert info.kind == "distill" and info.rows == 4
        steps = {s["step"]: (s["rows_in"], s["removed"], s["changed"]) for s in info.steps}
        assert steps["exact_duplicate"] == (5, 1, 0)
        assert steps["pii_redaction"] == (5, 0, 1)
        assert steps["pii_redaction_answers"][:2] == (4, 0)
        assert steps["teacher_failed"] == (4, 0, 0) and "teacher_cut" not in steps
        card = info.card["teacher"]
        assert (card["alias"], card["max_tokens"], card["temperature"]) == (ALIAS, 8, 0.0)
        assert card["keep_cut"] is True
        results = batch_results(database.engine, card["batch_id"])
        assert len(results) == 4 and all(r.ok for r in results.values())
        assert {r.finish_reason for r in results.values()} <= {"stop", "length"}
        rows = _lines(info.path)
        assert all(r["source"] == "distill" for r in rows)
        # Each answer is the teacher's line for that prompt, never the logged answer.
        answers = {r.body["choices"][0]["message"]["content"] for r in results.values()}
        assert {r["messages"][-1]["content"] for r in rows} <= answers
        assert not any(r["messages"][-1]["content"].startswith("logged answer") for r in rows)
        assert "jane@example.com" not in json.dumps(rows)  # redacted before the teacher saw it
        assert ("batch", 4, 4) in seen  # the batch reported its progress
        # The gateway writes its request log in batches, off the request path: give it time.
        deadline = time.monotonic() + 20
        while True:
            with database.engine.connect() as conn:
                marked = conn.execute(
                    text("SELECT count(*) FROM requests WHERE batch_id = :b"),
                    {"b": card["batch_id"]},
                ).scalar_one()
            if marked >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert marked == 4  # the teacher's calls are in the request log, marked as batch

        # Augmentation from the CLI, as an operator runs it.
        env = {**herd_env, "HERD_GATEWAY_URL": gateway.url}
        argv = [
            "dataset",
            "augment",
            "augmented",
            "--alias",
            ALIAS,
            "--n",
            "2",
            "--rating",
            "down",
            "--max-tokens",
            "16",
            "--split",
            "0.5,0.5,0",
            "--timeout",
            "240",
        ]
        run = run_herd(*argv, env=env, timeout_s=300)
        assert run.returncode == 0, run.stderr
        shown = json.loads(run_herd("dataset", "show", "augmented", "--json", env=env).stdout)

        # Distillation from the Retraining page (operator), through the same gateway.
        app = run_page("retraining.py", Role.OPERATOR)
        # The page's period holds the logged traffic (dated T0).
        app.selectbox(key="rt_range").select("Custom").run()
        app.date_input(key="rt_dates").set_value((T0.date(), T0.date())).run()
        app.text_input(key="ds_name").input("from-page")
        app.selectbox(key="ds_kind").select("distill")
        app.selectbox(key="ds_alias").select(ALIAS)
        app.number_input(key="ds_tokens").set_value(4)
        app.checkbox(key="ds_cut").check()  # 4 tokens cut most answers: keep them
        app.button(key="FormSubmitter:dataset_build-Build dataset").click().run(timeout=60)
        assert not app.exception, app.exception
        assert not app.error, [e.value for e in app.error]
        # The page started a `dataset` job and returned; the job builds the dataset.
        [started] = [x.value for x in app.success if x.value.startswith("Started job")]
        job_id = int(started.split()[2].rstrip(":"))
        jobs = JobStore(database.engine)
        wait_for(lambda: jobs.get(job_id).finished, timeout_s=300, step_s=0.5)
        job = jobs.get(job_id)
        assert job.state == "succeeded", (job.error, job.log_tail)
        assert job.result["dataset"] == "from-page" and job.progress == 1.0
        again = run_page("retraining.py", Role.OPERATOR)
        label = f"Job {job_id} · dataset from-page · succeeded"
        assert any(label in m.value for m in again.markdown)
        page_card = json.loads(run_herd("dataset", "show", "from-page", "--json", env=env).stdout)
        assert page_card["kind"] == "distill" and page_card["teacher"]["max_tokens"] == 4
        assert page_card["teacher"]["keep_cut"] is True

        # (After the page: its job list would show this failed job as an error.)
        # `herd dataset distill --max-tokens 1`: every answer stops at max_tokens and ends
        # mid-sentence; none is kept, and the job says why.
        argv = ["dataset", "distill", "all-cut", "--teacher", ALIAS, "--rating", "down"]
        run = run_herd(*argv, "--max-tokens", "1", "--timeout", "240", env=env, timeout_s=300)
        assert run.returncode == 1, (run.stdout, run.stderr)
        assert "stopped at max_tokens 1" in run.stdout and "--include-cut" in run.stdout
    aug = shown["augmentation"]
    assert (aug["alias"], aug["n"], aug["temperature"]) == (ALIAS, 2, 0.9)
    steps = {s["step"]: s for s in shown["steps"]}
    assert steps["paraphrase_failed"]["rows_in"] == 8  # 4 prompts x 2
    kept = steps["paraphrase_near_duplicate"]["rows_out"]
    assert kept == aug["paraphrases_kept"] == shown["synthetic_rows"]
    rows = _lines(Path(herd_env["HERD_HOME"]) / "datasets" / "augmented")
    assert len(rows) == 4 + kept == sum(shown["split_rows"].values())
    originals = {r["id"]: r for r in rows if not r["synthetic"]}
    assert steps["near_duplicate"]["removed"] == 1 and len(originals) == 4
    # Lines are keyed by the cleaned rows' order: the request log's, oldest first.
    with database.engine.connect() as conn:
        logged = [
            str(x)
            for x in conn.execute(
                text("SELECT id FROM requests WHERE batch_id IS NULL ORDER BY created_at, id")
            ).scalars()
        ]
    order = [x for x in logged if x in originals]
    results = batch_results(database.engine, aug["batch_id"])
    for row in rows:
        if row["synthetic"]:
            parent = originals[row["parent_id"]]
            assert row["session_id"] == parent["session_id"] and row["source"] == "augment"
            assert row["messages"][-1] == parent["messages"][-1]  # the original's answer
            k = row["id"].rsplit("-p", 1)[1]
            line = results[f"r{order.index(row['parent_id'])}-p{k}"]
            assert row["messages"][0]["content"] == clean_paraphrase(line.text or "")
