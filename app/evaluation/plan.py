"""Evaluation requests: checked before the job starts (models valid, the text readable, each
model small enough for this machine's free memory by the project's estimate)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from app.common.host_memory import free_vram_bytes
from app.config import Settings
from app.control.audit import Actor
from app.db.bind import Bind
from app.engine.loader import gpu_offload_supported
from app.evaluation.prompt_sets import PromptSet, PromptSetError, load_prompt_set
from app.jobs.kinds import JobKind
from app.jobs.spawn import spawn_job
from app.jobs.store import JobStore
from app.store.catalog import ModelStore
from app.store.estimate import MemoryEstimate, estimate_memory, format_bytes
from app.store.gguf_file import ModelLayout

DEFAULT_TEXT = Path(__file__).parent / "texts" / "herd-eval.txt"
MAX_TEXT_BYTES = 64 * 1024 * 1024
# References scored by log-likelihood per model (the newest feedback, or a file's first).
REFERENCE_LIMIT = 200


class EvalRefused(ValueError):
    """An evaluation that cannot run as asked; the message says why."""


@dataclass(frozen=True)
class EvalRequest:
    """Which models, on which text, with which context and threads."""

    models: tuple[str, ...]
    text_path: str | None = None
    n_ctx: int = 512
    threads: int | None = None
    n_prompt: int = 512
    n_gen: int = 128
    repeats: int = 2
    # Layers offloaded to the GPU (-1: all); 0 measures on the CPU alone.
    n_gpu_layers: int = 0
    # None: the feedback set if any; 'feedback' (refused when empty) or a JSONL file's path.
    prompts: str | None = None
    # Prompts answered greedily and their most tokens; None: the settings' defaults.
    answers: int | None = None
    answer_tokens: int | None = None

    def params(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "text_path": self.text_path,
            "n_ctx": self.n_ctx,
            "threads": self.threads,
            "n_prompt": self.n_prompt,
            "n_gen": self.n_gen,
            "repeats": self.repeats,
            "n_gpu_layers": self.n_gpu_layers,
            "prompts": self.prompts,
            "answers": self.answers,
            "answer_tokens": self.answer_tokens,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> EvalRequest:
        return cls(
            models=tuple(params["models"]),
            text_path=params.get("text_path"),
            n_ctx=int(params.get("n_ctx") or 512),
            threads=params.get("threads"),
            n_prompt=int(params.get("n_prompt") or 512),
            n_gen=int(params.get("n_gen") or 128),
            repeats=int(params.get("repeats") or 2),
            n_gpu_layers=int(params.get("n_gpu_layers") or 0),
            prompts=params.get("prompts"),
            answers=params.get("answers"),
            answer_tokens=params.get("answer_tokens"),
        )

    @property
    def text(self) -> Path:
        return Path(self.text_path) if self.text_path else DEFAULT_TEXT

    @property
    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1


@dataclass(frozen=True)
class EvalInputs:
    """What an evaluation reads, loaded once when it is checked: the job measures exactly
    what was checked (the feedback set may grow in between)."""

    text: str
    text_sha256: str
    prompts: PromptSet


def read_text(path: Path) -> tuple[str, str]:
    """(text, sha256) of an evaluation text; EvalRefused if it cannot be used."""
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise EvalRefused(f"{path} is {format_bytes(size)}; the limit is 64 MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise EvalRefused(f"cannot read the evaluation text {path}: {exc}") from exc
    try:
        return data.decode("utf-8"), hashlib.sha256(data).hexdigest()
    except UnicodeDecodeError as exc:
        raise EvalRefused(f"{path} is not UTF-8 text: {exc}") from exc


def prompt_set(bind: Bind, request: EvalRequest) -> PromptSet:
    """The request's prompt set, loaded; EvalRefused if it cannot be used."""
    try:
        return load_prompt_set(bind, request.prompts, REFERENCE_LIMIT)
    except PromptSetError as exc:
        raise EvalRefused(str(exc)) from exc


def memory_estimate(layout: dict[str, Any], n_ctx: int, n_gpu_layers: int = 0) -> MemoryEstimate:
    """Herd's memory estimate for a model at n_ctx with n_gpu_layers offloaded (what the
    Deployments page shows)."""
    return estimate_memory(ModelLayout.from_json(layout), n_gpu_layers, n_ctx)


def check_eval(
    store: ModelStore, request: EvalRequest, available_bytes: int | None = None
) -> EvalInputs:
    """Refuse a request that cannot run, before any job starts; what it reads, loaded."""
    if not request.models:
        raise EvalRefused("choose at least one model")
    if request.n_ctx < 16:
        raise EvalRefused(f"context {request.n_ctx} is too small (at least 16)")
    if request.n_gpu_layers < -1:
        raise EvalRefused(f"GPU layers {request.n_gpu_layers}: give -1 (all), 0 or more")
    free_vram = None
    if request.n_gpu_layers != 0:
        if not gpu_offload_supported():
            raise EvalRefused(
                "this llama-cpp-python build cannot offload layers to a GPU; evaluate with "
                "0 GPU layers or install a GPU build"
            )
        free_vram = free_vram_bytes(0)
    if request.answers is not None and request.answers < 0:
        raise EvalRefused(f"{request.answers} answers: give 0 or more prompts to answer")
    if request.answer_tokens is not None and not 1 <= request.answer_tokens < request.n_ctx:
        raise EvalRefused(
            f"{request.answer_tokens} answer tokens do not fit a context of {request.n_ctx}"
        )
    text, text_sha256 = read_text(request.text)
    prompts = prompt_set(store.engine, request)
    free = available_bytes if available_bytes is not None else psutil.virtual_memory().available
    for name in request.models:
        model = store.get(name)
        if model is None:
            raise EvalRefused(f"no model {name!r} in the store")
        if model.status != "valid" or model.layout is None:
            raise EvalRefused(f"{name} is {model.status}: {model.error}")
        estimate = memory_estimate(model.layout, request.n_ctx, request.n_gpu_layers)
        if free_vram is not None and estimate.vram_bytes > free_vram:
            raise EvalRefused(
                f"{name} does not fit in GPU memory: the estimate at context {request.n_ctx} "
                f"with {request.n_gpu_layers} GPU layers is {estimate.vram_bytes} bytes "
                f"({format_bytes(estimate.vram_bytes)}), {free_vram} bytes "
                f"({format_bytes(free_vram)}) are free"
            )
        needed = estimate.ram_bytes
        if needed > free:
            raise EvalRefused(
                f"{name} does not fit in memory: the estimate at context {request.n_ctx} is "
                f"{needed} bytes ({format_bytes(needed)}), {free} bytes "
                f"({format_bytes(free)}) are available"
            )
    return EvalInputs(text, text_sha256, prompts)


def start_eval(
    settings: Settings, store: ModelStore, jobs: JobStore, request: EvalRequest, actor: Actor
) -> int:
    """Check the request, then start the evaluation job (an "evaluation.start" audit row);
    its id."""
    check_eval(store, request)
    job_id = jobs.start(JobKind.EVALUATE, request.params(), actor, "evaluation.start")
    spawn_job(settings, job_id)
    return job_id
