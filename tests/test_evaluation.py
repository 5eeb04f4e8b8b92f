"""Evaluation jobs on the real demo model: metrics stored per model, refusals, the Pareto front."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from app.config import Settings
from app.db.database import Database
from app.engine.cpu_buffers import new_llama
from app.engine.loader import gpu_offload_supported
from app.evaluation.answers import AnswerStore
from app.evaluation.metrics import Metric
from app.evaluation.pareto import pareto_front
from app.evaluation.plan import EvalRefused, EvalRequest, check_eval
from app.evaluation.store import EvaluationStore
from app.jobs.store import JobStore
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from tests.analytics_data import insert_feedback, insert_messages, insert_requests, request_row
from tests.conftest import run_herd

VRAM_METRICS = (Metric.VRAM_PEAK, Metric.VRAM_ESTIMATE, Metric.VRAM_ERROR)


def test_eval_measures_the_demo_model_and_stores_one_row_per_metric(
    database: Database, models_dir: Path, herd_env: dict[str, str], tmp_path: Path
) -> None:
    store = ModelStore(database.engine, models_dir)
    demo = add_demo_model(store)
    # One thumbs-up answer: the reference set the job scores each model on.
    now = datetime.now(UTC)
    liked = request_row(now, alias="smol", model_id=demo.id)
    insert_requests(database.engine, [liked])
    insert_messages(database.engine, [{
        "request_id": liked["id"], "created_at": now,
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "response": "The capital of France is Paris."}])  # fmt: skip
    insert_feedback(database.engine, [{"request_id": liked["id"], "rating": 1,
                                       "created_at": now, "updated_at": now}])  # fmt: skip
    # Small settings keep this quick on a busy CI machine; bench/ runs the real ones.
    done = run_herd("eval", demo.name, "--ctx", "64", "--threads", "1", "--pp", "32",
                    "--tg", "8", "--repeats", "1", "--answer-tokens", "8", "--by", "ann",
                    env=herd_env, timeout_s=600)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "PPL" in done.stdout and demo.name[:40] in done.stdout
    with database.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT metric, value, settings FROM evaluations WHERE model_id = :m"),
            {"m": demo.id},
        ).all()
    values = {metric: value for metric, value, _ in rows}
    # On the CPU (0 GPU layers) every metric but the VRAM ones.
    assert set(values) == {m.value for m in Metric} - set(VRAM_METRICS)
    assert -20 < values[Metric.REFERENCE_LOGLIK] < 0  # mean log-probability per answer token
    assert values[Metric.SIZE] == demo.size_bytes
    assert 1 < values[Metric.PERPLEXITY] < 1000 and math.isfinite(values[Metric.PERPLEXITY])
    assert values[Metric.PREFILL] > 0 and values[Metric.DECODE] > 0
    # The weights are mmapped and read while measuring: RSS grows by at least most of them.
    assert values[Metric.RSS_PEAK] > 0.5 * demo.size_bytes
    settings = rows[0][2]
    assert settings["n_ctx"] == 64 and settings["threads"] == 1
    assert settings["text"] == "herd-eval.txt" and len(settings["text_sha256"]) == 64
    assert settings["windows"] == settings["tokens_scored"] // 31
    assert settings["references"] == 1 and settings["reference_tokens"] > 3
    assert settings["prompts"] == "feedback" and settings["answers"] == 1
    # The one reference's prompt answered greedily, stored beside the reference.
    [entry] = AnswerStore(database.engine).side_by_side("feedback")
    assert entry.reference == "The capital of France is Paris." and entry.source == "thumbs_up"
    assert entry.prompt == [{"role": "user", "content": "What is the capital of France?"}]
    assert list(entry.answers) == [demo.name] and entry.answers[demo.name].strip()
    [latest] = EvaluationStore(database.engine).latest()
    assert latest["model"] == demo.name and latest[Metric.PERPLEXITY] == values[Metric.PERPLEXITY]

    # The same settings on a text too short for two windows: the job fails and says why.
    short = tmp_path / "short.txt"
    short.write_text("Too short to measure.", encoding="utf-8")
    failed = run_herd("eval", demo.name, "--ctx", "64", "--text", str(short), "--threads", "1",
                      "--pp", "16", "--tg", "4", "--repeats", "1", env=herd_env)  # fmt: skip
    assert failed.returncode == 1
    [job] = [j for j in JobStore(database.engine).recent("evaluate") if j.state == "failed"]
    assert "needs at least 128" in (job.error or "")


def test_evaluating_a_model_that_does_not_fit_is_refused_with_the_estimate(
    database: Database, models_dir: Path, settings: Settings, tmp_path: Path
) -> None:
    store = ModelStore(database.engine, models_dir)
    demo = add_demo_model(store)
    request = EvalRequest((demo.name,))
    with pytest.raises(EvalRefused, match=r"does not fit in memory: the estimate at context 512"):
        check_eval(store, request, available_bytes=10 * 1024 * 1024)
    with pytest.raises(EvalRefused, match="no model"):
        check_eval(store, EvalRequest(("missing.gguf",)))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(EvalRefused, match="not UTF-8"):
        check_eval(store, EvalRequest((demo.name,), text_path=str(binary)))
    # This machine has room for 135M parameters; the check hands the job what it read.
    inputs = check_eval(store, request)
    assert inputs.text_sha256 == hashlib.sha256(request.text.read_bytes()).hexdigest()
    assert inputs.text == request.text.read_text(encoding="utf-8")
    assert (inputs.prompts.name, inputs.prompts.references) == ("feedback", [])
    with pytest.raises(EvalRefused, match="GPU layers -2"):
        check_eval(store, EvalRequest((demo.name,), n_gpu_layers=-2))
    if not gpu_offload_supported():
        with pytest.raises(EvalRefused, match="cannot offload layers to a GPU"):
            check_eval(store, EvalRequest((demo.name,), n_gpu_layers=-1))


def test_pareto_front_keeps_the_models_nothing_beats_on_both() -> None:
    # (size, perplexity): smaller and lower are better.
    points = [(100.0, 20.0), (150.0, 19.0), (120.0, 21.0), (80.0, 25.0), (150.0, 19.0)]
    assert pareto_front(points) == [0, 1, 3, 4]
    # (decode tokens/s, perplexity): faster is better.
    speed = [(50.0, 20.0), (40.0, 19.0), (30.0, 22.0)]
    assert pareto_front(speed, maximize_x=True) == [0, 1]


# Long enough for perplexity at context 64 (two windows), short enough to measure quickly.
SHORT_TEXT = " ".join(
    f"Line {i}: the herd grazes by the river while the shepherd counts the sheep."
    for i in range(12)
)


def test_a_prompt_file_is_answered_by_each_model_side_by_side(
    database: Database, models_dir: Path, herd_env: dict[str, str], tmp_path: Path
) -> None:
    store = ModelStore(database.engine, models_dir)
    demo = add_demo_model(store)
    copy = store.add(Path(demo.path), "smol-copy.gguf")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Name a colour of the sky.", "reference": "Blue."}) + "\n\n"
        + json.dumps({"prompt": [{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": "What do bees make?"}],
                      "reference": "Honey."}) + "\n"
        + json.dumps({"prompt": "Not answered: --answers 2.", "reference": "-"}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    text_file = tmp_path / "short.txt"
    text_file.write_text(SHORT_TEXT, encoding="utf-8")
    done = run_herd("eval", demo.name, copy.name, "--prompts", str(prompts), "--answers", "2",
                    "--answer-tokens", "12", "--text", str(text_file), "--ctx", "64",
                    "--threads", "1", "--pp", "16", "--tg", "4", "--repeats", "1",
                    env=herd_env, timeout_s=600)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    # The CLI prints the answers per prompt after the results table.
    assert "PROMPT 1: Name a colour of the sky." in done.stdout
    assert "PROMPT 2: What do bees make? (after 1 earlier message(s))" in done.stdout
    assert "PROMPT 3" not in done.stdout
    answers = AnswerStore(database.engine)
    assert answers.prompt_sets() == ["prompts.jsonl"]
    entries = answers.side_by_side("prompts.jsonl")
    assert [e.reference for e in entries] == ["Blue.", "Honey."]  # the file's order
    assert [e.source for e in entries] == ["file", "file"]
    assert entries[1].prompt[0] == {"role": "system", "content": "Answer briefly."}
    # The same weights answer the same greedily; what they answer is llama.cpp's greedy
    # chat completion of the prompt.
    llama = new_llama(model_path=demo.path, n_ctx=64, n_threads=1, flash_attn=True, verbose=False)
    try:
        for entry in entries:
            assert set(entry.answers) == {demo.name, copy.name}
            assert entry.answers[demo.name] == entry.answers[copy.name]
            expected = llama.create_chat_completion(
                entry.prompt, temperature=0, top_k=1, max_tokens=12
            )["choices"][0]["message"]["content"]
            assert entry.answers[demo.name] == expected
    finally:
        llama.close()
    # Log-likelihood was scored on all three references of the file.
    with database.engine.connect() as conn:
        refs = conn.execute(text(
            "SELECT settings->>'references', settings->>'prompts' FROM evaluations "
            "WHERE model_id = :m AND metric = 'perplexity'"), {"m": copy.id}).one()  # fmt: skip
    assert refs == ("3", "prompts.jsonl")


def test_bad_prompt_sets_are_refused_with_line_numbers(
    database: Database, models_dir: Path, herd_env: dict[str, str], tmp_path: Path
) -> None:
    store = ModelStore(database.engine, models_dir)
    demo = add_demo_model(store)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "fine", "reference": "ok"}\n'
        "{not json\n"
        '{"prompt": "no reference"}\n'
        "\n"
        '["a list"]\n'
        '{"prompt": [{"role": "wizard", "content": "x"}], "reference": "r"}\n'
        '{"prompt": "p", "reference": "r", "extra": 1}\n',
        encoding="utf-8",
    )
    with pytest.raises(EvalRefused) as refused:
        check_eval(store, EvalRequest((demo.name,), prompts=str(bad)))
    message = str(refused.value)
    assert "5 bad line(s)" in message
    assert "line 2: not JSON" in message
    assert "line 3: 'reference' must be a non-empty string" in message
    assert "line 5: expected an object" in message
    assert "line 6: 'prompt' must be" in message
    assert "line 7: unknown field(s) ['extra']" in message
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(EvalRefused, match="holds no prompts"):
        check_eval(store, EvalRequest((demo.name,), prompts=str(empty)))
    with pytest.raises(EvalRefused, match="cannot read the prompt file"):
        check_eval(store, EvalRequest((demo.name,), prompts=str(tmp_path / "missing.jsonl")))
    # Asked for by name, the feedback set must hold something; by default it may be empty.
    with pytest.raises(EvalRefused, match="the feedback prompt set is empty"):
        check_eval(store, EvalRequest((demo.name,), prompts="feedback"))
    assert check_eval(store, EvalRequest((demo.name,))).prompts.name == "feedback"
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "fine", "reference": "ok"}\n' * 3, encoding="utf-8")
    loaded = check_eval(store, EvalRequest((demo.name,), prompts=str(good))).prompts
    assert loaded.name == "good.jsonl" and [r.answer for r in loaded.references] == ["ok"] * 3
    with pytest.raises(EvalRefused, match="16 answer tokens do not fit a context of 16"):
        check_eval(store, EvalRequest((demo.name,), n_ctx=16, answer_tokens=16))
    # The CLI says the same and starts no job.
    refused_cli = run_herd("eval", demo.name, "--prompts", str(bad), env=herd_env)
    assert refused_cli.returncode != 0
    assert "line 2: not JSON" in refused_cli.stderr + refused_cli.stdout
    assert JobStore(database.engine).recent("evaluate") == []
