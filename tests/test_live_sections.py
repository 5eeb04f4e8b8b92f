"""Sections fed by a job update themselves when the job ends, on a page left open: the
Models table after a quantize job, the evaluation results after an evaluate job, the
datasets list after a dataset job, and each stops polling once no job of its kind runs.
The browser's fragment timers are fired by tests/fragment_runs.py; job results read as
sentences and tables."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.control.accounts import Role
from app.datasets.build import BuildSpec, build_dataset, datasets_root
from app.datasets.selection import read_upload
from app.db.database import Database
from app.evaluation.metrics import Metric
from app.evaluation.store import EvaluationStore
from app.jobs.store import JobState, JobStore
from app.store.catalog import ModelStore
from app.ui.job_results import ResultText, describe_result, job_target
from app.ui.jobs_panel import IDLE_S
from app.ui.live import REFRESH_S
from tests.conftest import run_page
from tests.fragment_runs import fragment_timers, scheduled, tick
from tests.test_quantize import finished, wait_job

BUILD = "FormSubmitter:dataset_build-Build dataset"


@pytest.fixture(autouse=True)
def timers() -> Iterator[None]:
    with fragment_timers():
        yield


@pytest.fixture
def tiny_store(
    dashboard_env: None, database: Database, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> ModelStore:
    store = ModelStore(database.engine, models_dir)
    store.add(tiny_gguf("tiny.gguf"))
    return store


def _running(database: Database, kind: str, params: dict[str, object]) -> int:
    """A job of this kind, queued and claimed by this process, as a page sees a running one."""
    jobs = JobStore(database.engine)
    job_id = jobs.create(kind, params, "olivia")
    jobs.claim(job_id)
    return job_id


def _succeeded(app: AppTest) -> list[str]:
    return [s.value for s in app.success if s.value.startswith("Succeeded")]


def test_the_models_table_lists_a_quantized_model_when_its_job_ends(
    tiny_store: ModelStore, database: Database
) -> None:
    app = run_page("models.py", Role.OPERATOR)
    # No job: nothing refreshes but the job list, which looks for new jobs now and then.
    assert scheduled() == [IDLE_S]
    app.multiselect(key="quantize_types").set_value(["Q8_0"])
    app.button(key="FormSubmitter:quantize-Start quantizing").click().run()
    assert not app.exception, app.exception
    # The table and the job list follow the job.
    assert scheduled() == [REFRESH_S, REFRESH_S]
    jobs = JobStore(database.engine)
    [job] = jobs.recent("quantize")
    assert wait_job(jobs, job.id, finished, timeout_s=120).state == "succeeded"

    tick(app)  # the page was left open: its timers fire once
    assert list(app.dataframe[0].value["name"]) == ["tiny.Q8_0.gguf", "tiny.gguf"]
    [done] = _succeeded(app)
    assert done.startswith("Succeeded: made tiny.Q8_0.gguf, ") and "% of the source's" in done
    assert "{" not in done and "'model" not in done
    assert scheduled() == [IDLE_S]  # the job ended: the table stopped polling


def test_evaluation_results_appear_when_the_job_ends(
    tiny_store: ModelStore, database: Database
) -> None:
    job_id = _running(database, "evaluate", {"models": ["tiny.gguf", "other.gguf"]})
    app = run_page("evaluation.py", Role.VIEWER)
    assert "No evaluations yet." in [i.value for i in app.info]
    assert any(f"Job {job_id} · evaluate tiny.gguf, other.gguf · running" in m.value
               for m in app.markdown)  # fmt: skip
    assert scheduled() == [REFRESH_S, REFRESH_S]

    # The job records its measurement and ends, as app/evaluation/evaluate_job.py does.
    model = tiny_store.get("tiny.gguf")
    assert model is not None
    values = {Metric.SIZE: 1_000_000.0, Metric.PERPLEXITY: 20.5, Metric.DECODE: 50.25}
    EvaluationStore(database.engine).record(model.id, values, {"n_ctx": 512}, job_id)
    result = {"models": {"tiny.gguf": {m.value: v for m, v in values.items()}},
              "settings": {"n_ctx": 512, "threads": 4, "n_gpu_layers": 0}}  # fmt: skip
    JobStore(database.engine).finish(job_id, JobState.SUCCEEDED, result=result)

    tick(app)
    assert "No evaluations yet." not in [i.value for i in app.info]
    [measured, results] = [d.value for d in app.dataframe]
    assert list(results["model"]) == ["tiny.gguf"] and list(results["perplexity"]) == [20.5]
    # The job's result: a sentence and a table, not the dict it returned.
    assert _succeeded(app) == [
        "Succeeded: measured 1 model with a context of 512 tokens, 4 threads."
    ]
    assert measured.to_dict("records") == [
        {"model": "tiny.gguf", "size": "976.6 KiB", "decode (tokens/s)": 50.2,
         "perplexity": 20.5}
    ]  # fmt: skip
    assert scheduled() == [IDLE_S]


def test_a_dataset_built_on_the_page_is_listed_in_the_same_run(
    dashboard_env: None, database: Database
) -> None:
    app = run_page("retraining.py", Role.OPERATOR)
    assert "No datasets yet." in [c.value for c in app.caption]
    app.text_input(key="ds_name").input("uploaded")
    app.radio(key="ds_source").set_value("Uploaded file")
    app.file_uploader(key="ds_upload").upload("good.jsonl", _upload_rows())
    app.button(key=BUILD).click().run()
    assert not app.exception, app.exception
    assert any("Built dataset 'uploaded': 6 rows." in s.value for s in app.success)
    # The list above the form shows the dataset just built, in the same run.
    assert "No datasets yet." not in [c.value for c in app.caption]
    assert list(app.dataframe[0].value["name"]) == ["uploaded"]


def test_the_datasets_list_shows_a_dataset_job_s_dataset_when_it_ends(
    dashboard_env: None, database: Database, tmp_path: Path
) -> None:
    job_id = _running(database, "dataset", {"target": "distilled"})
    app = run_page("retraining.py", Role.VIEWER)
    assert "No datasets yet." in [c.value for c in app.caption]
    # The datasets list and the dataset jobs follow the job.
    assert scheduled() == [REFRESH_S, REFRESH_S]

    # The job writes its dataset and ends, as app/datasets/job.py does.
    root = datasets_root(tmp_path / "home")
    spec = BuildSpec(name="distilled", created_by="olivia")
    info = build_dataset(database.engine, root, spec, read_upload("x.jsonl", _upload_rows()))
    result = {"dataset": info.name, "kind": info.kind, "rows": info.rows,
              "splits": info.split_rows, "path": str(info.path)}  # fmt: skip
    JobStore(database.engine).finish(job_id, JobState.SUCCEEDED, result=result)

    tick(app)
    assert "No datasets yet." not in [c.value for c in app.caption]
    assert list(app.dataframe[0].value["name"]) == ["distilled"]
    splits = ", ".join(f"{k} {v}" for k, v in info.split_rows.items())
    assert _succeeded(app) == [
        f"Succeeded: built the sft dataset 'distilled': 6 rows ({splits}) in {info.path}."
    ]
    assert scheduled() == [IDLE_S]


def test_the_batches_list_polls_only_while_a_batch_runs(
    dashboard_env: None, database: Database
) -> None:
    app = run_page("batches.py", Role.VIEWER)
    assert scheduled() == [IDLE_S]
    job_id = _running(database, "batch", {"batch_id": "batch_x"})
    tick(app)  # the idle check notices the batch's runner job: the page follows it
    assert scheduled() == [REFRESH_S]
    JobStore(database.engine).finish(job_id, JobState.SUCCEEDED, result={})
    tick(app)
    assert scheduled() == [IDLE_S]


def _upload_rows() -> bytes:
    return b"\n".join(
        json.dumps(
            {
                "prompt": f"question number {i} about {w}",
                "response": f"answer {i}",
                "session_id": f"c{i // 2}",
            }
        ).encode()
        for i, w in enumerate(["rivers", "lakes", "seas", "hills", "woods", "plains"])
    )


def test_job_results_read_as_sentences_for_every_kind_and_shape() -> None:
    batch = {"batch_id": "batch_1", "status": "completed", "completed": 1200, "failed": 3}
    assert describe_result("batch", batch).sentence == (
        "batch batch_1 completed: 1,200 completed, 3 failed."
    )
    quantized = {"model": "m.Q4_K_M.gguf", "size_bytes": 2 * 1024**3, "seconds": 95.25,
                 "source_bytes": 8 * 1024**3, "sha256": "ab" * 32}  # fmt: skip
    assert describe_result("quantize", quantized).sentence == (
        "made m.Q4_K_M.gguf, 2.0 GiB (25% of the source's 8.0 GiB) in 95.2 s; sha256 abababababab…."
    )
    # A result of a shape no reader knows (an older job) is still words, not a repr.
    odd = describe_result("quantize", {"models": ["a", "b"], "took_s": 1.5, "extra": {"k": 2}})
    assert odd == ResultText("models: a, b; took s: 1.5; extra: k 2.")
    assert describe_result("evaluate", None).sentence == "done."
    assert job_target({"models": ["a.gguf", "b.gguf"]}) == "a.gguf, b.gguf"
