"""The evaluation job: runs in its own process (`herd jobs run ID`), one model at a time.

Per model: file size; peak RSS while loaded and measured, above the process's RSS before
loading (so the Python runtime is not counted), next to Herd's estimate (the same n_ctx and
GPU layers) with the error in %; with GPU layers, peak VRAM from nvidia-smi likewise;
llama-bench-style pp/tg tokens/s; llama-perplexity-style perplexity; reference
log-likelihood and greedy answers on the prompt set.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from app.common.host_memory import gpu_bytes_of
from app.db.tables import Model
from app.engine.cpu_buffers import ExtraBuffers
from app.engine.errors import ModelLoadError
from app.engine.measure import Measured, MeasureError, Perplexity, Speed
from app.evaluation.answers import AnswerStore, GeneratedAnswer
from app.evaluation.metrics import Metric
from app.evaluation.plan import (
    EvalInputs,
    EvalRefused,
    EvalRequest,
    check_eval,
    memory_estimate,
)
from app.evaluation.references import Reference
from app.evaluation.store import EvaluationStore
from app.jobs.runner import JobContext, JobFailed
from app.store.catalog import ModelStore

RSS_SAMPLE_S = 0.02
VRAM_SAMPLE_S = 0.5


class PeakMemory:
    """Samples this process's RSS in a thread, and with gpu its GPU memory (nvidia-smi, the
    runner workers use; every VRAM_SAMPLE_S, since each call takes tens of ms); the highest
    seen. vram_peak stays None where nvidia-smi is missing or does not list this process."""

    def __init__(self, gpu: bool = False) -> None:
        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self.vram_peak: int | None = None
        self._gpu = gpu
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample_vram(self) -> None:
        used = gpu_bytes_of(os.getpid())
        if used is not None:
            self.vram_peak = max(self.vram_peak or 0, used)

    def _run(self) -> None:
        every = max(1, round(VRAM_SAMPLE_S / RSS_SAMPLE_S))
        tick = 0
        while not self._stop.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, self._process.memory_info().rss)
            tick += 1
            if self._gpu and tick % every == 0:
                self.sample_vram()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def answer_count(request: EvalRequest, default: int) -> int:
    """How many prompts each model answers: the request's, else the settings' default."""
    return default if request.answers is None else request.answers


def answer_tokens(request: EvalRequest, default: int) -> int:
    """The most tokens an answer may have: the request's (checked to fit), else the
    settings' default, cut to half the context so that a prompt still fits."""
    if request.answer_tokens is not None:
        return request.answer_tokens
    return max(1, min(default, request.n_ctx // 2))


def greedy_answers(
    measured: Measured, references: list[Reference], max_tokens: int, ctx: JobContext
) -> list[GeneratedAnswer]:
    """Each reference's prompt answered greedily, in the set's order."""
    out = []
    for position, ref in enumerate(references):
        ctx.check_cancel()
        prompt, _ = measured.chat_tokens(ref.messages, ref.answer)
        answer, n = measured.greedy(prompt, max_tokens)
        out.append(GeneratedAnswer(ref, position, answer, n))
    return out


@dataclass(frozen=True)
class ModelRun:
    """What measuring one loaded model gave, memory counted above the process's before."""

    speed: Speed
    ppl: Perplexity
    # Log-likelihood summed over the reference answers' tokens, and the tokens scored.
    loglik: float
    scored: int
    generated: list[GeneratedAnswer]
    seconds: float
    rss_peak: int
    vram_peak: int | None


def run(ctx: JobContext) -> dict[str, Any]:
    request = EvalRequest.from_params(ctx.params)
    store = ModelStore(ctx.db.engine, ctx.settings.models_path)
    try:
        inputs = check_eval(store, request)
    except EvalRefused as exc:
        raise JobFailed(str(exc)) from exc
    evaluations = EvaluationStore(ctx.db.engine)
    answers = AnswerStore(ctx.db.engine)
    prompts = inputs.prompts
    to_answer = prompts.references[: answer_count(request, ctx.settings.eval_answer_prompts)]
    max_tokens = answer_tokens(request, ctx.settings.eval_answer_tokens)
    settings = run_settings(request, inputs, len(to_answer), max_tokens)
    results: dict[str, Any] = {}
    share = 1 / len(request.models)
    for k, name in enumerate(request.models):
        ctx.check_cancel()
        model = store.get(name)
        assert model is not None and model.layout is not None  # checked above
        measured = measure_model(ctx, request, inputs, model, to_answer, max_tokens, share, k)
        values = metric_values(request, model, measured)
        ppl = measured.ppl
        model_settings = {**settings, "tokens_scored": ppl.tokens_scored,
                          "windows": ppl.windows, "nll_stderr": ppl.nll_stderr,
                          "reference_tokens": measured.scored}  # fmt: skip
        evaluations.record(model.id, values, model_settings, ctx.job.id)
        answers.record(model.id, prompts.name, measured.generated, max_tokens, ctx.job.id)
        estimate = int(values[Metric.RSS_ESTIMATE])
        ctx.log(f"{name}: perplexity {ppl.perplexity:.4f} over {ppl.tokens_scored} tokens "
                f"({ppl.windows} windows); peak RSS {measured.rss_peak} bytes, estimate "
                f"{estimate}; {measured.seconds:.1f} s")  # fmt: skip
        results[name] = {metric.value: value for metric, value in values.items()}
        ctx.set_progress(share * (k + 1))
    return {"models": results, "settings": settings}


def run_settings(
    request: EvalRequest, inputs: EvalInputs, answered: int, max_tokens: int
) -> dict[str, Any]:
    """The settings every model of the run is measured with, as each result records them."""
    prompts = inputs.prompts
    return {
        "n_ctx": request.n_ctx,
        "threads": request.thread_count,
        "n_gpu_layers": request.n_gpu_layers,
        "text": request.text.name,
        "text_sha256": inputs.text_sha256,
        "pp": request.n_prompt,
        "tg": request.n_gen,
        "repeats": request.repeats,
        "prompts": prompts.name,
        "references": len(prompts.references),
        "references_sha256": prompts.sha256,
        "answers": answered,
        "answer_tokens": max_tokens,
    }


def measure_model(
    ctx: JobContext,
    request: EvalRequest,
    inputs: EvalInputs,
    model: Model,
    to_answer: list[Reference],
    max_tokens: int,
    share: float,
    k: int,
) -> ModelRun:
    """Load the k-th model of the run and measure it: speed, perplexity, reference
    log-likelihood, greedy answers and peak memory; progress moves within its share."""
    name = model.name
    ctx.log(f"{name}: loading (context {request.n_ctx}, {request.thread_count} threads, "
            f"{request.n_gpu_layers} GPU layers)")  # fmt: skip
    baseline = psutil.Process().memory_info().rss
    gpu = request.n_gpu_layers != 0
    # GPU memory this process held before loading (a CUDA context of an earlier model).
    vram_baseline = (gpu_bytes_of(os.getpid()) or 0) if gpu else 0
    try:
        with (
            PeakMemory(gpu) as memory,
            Measured(
                Path(model.path),
                request.n_ctx,
                request.thread_count,
                request.n_gpu_layers,
                ExtraBuffers(ctx.settings.cpu_extra_buffers),
            ) as measured,
        ):
            if gpu:
                memory.sample_vram()  # loaded: the weights are on the GPU now
            tokens = measured.tokenize(inputs.text)
            started = time.monotonic()
            speed = measured.speed(
                min(request.n_prompt, request.n_ctx),
                min(request.n_gen, request.n_ctx),
                request.repeats,
            )
            ctx.log(f"{name}: pp{speed.n_prompt} {speed.prefill_tps:.1f} tokens/s, "
                    f"tg{speed.n_gen} {speed.decode_tps:.1f} tokens/s")  # fmt: skip
            ctx.set_progress(share * (k + 0.3))

            def window(done: int, total: int) -> None:
                ctx.set_progress(share * (k + 0.3 + 0.7 * done / total))
                ctx.check_cancel()

            ppl = measured.perplexity(tokens, window)
            loglik, scored = reference_loglik(measured, inputs.prompts.references, request.n_ctx)
            generated = greedy_answers(measured, to_answer, max_tokens, ctx)
            if gpu:
                memory.sample_vram()
            seconds = time.monotonic() - started
    except (ModelLoadError, MeasureError) as exc:
        raise JobFailed(f"{name}: {exc}") from exc
    vram = None if memory.vram_peak is None else memory.vram_peak - vram_baseline
    return ModelRun(speed, ppl, loglik, scored, generated, seconds, memory.peak - baseline, vram)


def reference_loglik(
    measured: Measured, references: list[Reference], n_ctx: int
) -> tuple[float, int]:
    """Log-likelihood summed over the reference answers' tokens, and the tokens scored."""
    loglik, scored = 0.0, 0
    for ref in references:
        prompt, answer = measured.chat_tokens(ref.messages, ref.answer)
        if len(answer) >= n_ctx:
            continue  # an answer longer than the context cannot be scored whole
        total, n = measured.mean_loglik(prompt, answer)
        loglik, scored = loglik + total, scored + n
    return loglik, scored


def metric_values(request: EvalRequest, model: Model, measured: ModelRun) -> dict[Metric, float]:
    """The metrics recorded for one model: size, memory against Herd's estimate, speed,
    perplexity, reference log-likelihood when any was scored, VRAM where it was seen."""
    assert model.layout is not None  # checked by check_eval
    peak = measured.rss_peak
    estimates = memory_estimate(model.layout, request.n_ctx, request.n_gpu_layers)
    estimate = estimates.ram_bytes
    values = {
        Metric.SIZE: float(model.size_bytes),
        Metric.RSS_PEAK: float(peak),
        Metric.RSS_ESTIMATE: float(estimate),
        Metric.RSS_ERROR: 100.0 * (estimate - peak) / peak if peak > 0 else 0.0,
        Metric.PREFILL: measured.speed.prefill_tps,
        Metric.DECODE: measured.speed.decode_tps,
        Metric.PERPLEXITY: measured.ppl.perplexity,
    }
    if measured.scored:
        values[Metric.REFERENCE_LOGLIK] = measured.loglik / measured.scored
    vram = measured.vram_peak
    if vram is not None:
        values[Metric.VRAM_PEAK] = float(vram)
        values[Metric.VRAM_ESTIMATE] = float(estimates.vram_bytes)
        if vram > 0:
            values[Metric.VRAM_ERROR] = 100.0 * (estimates.vram_bytes - vram) / vram
    return values
