"""`herd eval`: measure models as a job, then show the results table and answers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.common.cli_output import echo
from app.common.cli_parser import SubParsers, command
from app.config import Settings
from app.control.audit import cli_actor
from app.db.database import Database
from app.engine.serving import add_serving_flag
from app.evaluation.answers import AnswerStore, SideBySide, prompt_text
from app.evaluation.metrics import Metric
from app.evaluation.plan import EvalRequest, start_eval
from app.evaluation.prompt_sets import FEEDBACK
from app.evaluation.store import EvaluationStore
from app.jobs.cli import follow_with_bars
from app.jobs.store import JobStore
from app.store.catalog import ModelStore
from app.store.estimate import format_bytes


def results_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The evaluation table as text lines."""
    lines = [f"{'MODEL':44} {'TYPE':8} {'SIZE':>10} {'PPL':>9} {'PP t/s':>9} {'TG t/s':>8} "
             f"{'RSS':>10} {'EST':>10} {'ERR%':>6} {'VRAM':>10}"]  # fmt: skip
    for row in rows:

        def num(metric: Metric, spec: str, row: dict[str, Any] = row) -> str:
            value = row.get(metric.value)
            return "-" if value is None else format(value, spec)

        lines.append(
            f"{row['model'][:44]:44} {(row['file_type'] or '-')[:8]:8} "
            f"{format_bytes(row.get(Metric.SIZE.value)):>10} {num(Metric.PERPLEXITY, '.4f'):>9} "
            f"{num(Metric.PREFILL, '.1f'):>9} {num(Metric.DECODE, '.1f'):>8} "
            f"{format_bytes(row.get(Metric.RSS_PEAK.value)):>10} "
            f"{format_bytes(row.get(Metric.RSS_ESTIMATE.value)):>10} "
            f"{num(Metric.RSS_ERROR, '+.1f'):>6} "
            f"{format_bytes(row.get(Metric.VRAM_PEAK.value)):>10}"
        )
    return lines


def answers_lines(entries: list[SideBySide], models: list[str], width: int = 100) -> list[str]:
    """The greedy answers per prompt, each on one line cut to width (the page shows them
    whole)."""

    def cut(value: str) -> str:
        flat = " ".join(value.split())
        return flat if len(flat) <= width else flat[: width - 3] + "..."

    lines = []
    for k, entry in enumerate(entries, start=1):
        lines += [f"PROMPT {k}: {cut(prompt_text(entry.prompt))}",
                  f"  {'reference':44} {cut(entry.reference)}"]  # fmt: skip
        lines += [f"  {m[:44]:44} {cut(entry.answers[m])}" for m in models if m in entry.answers]
    return lines


def prompts_choice(value: str | None) -> str | None:
    """--prompts as the job reads it: 'feedback', or a file's absolute path (the job runs in
    its own process, which need not share this one's directory)."""
    if value is None or value == FEEDBACK:
        return value
    return str(Path(value).expanduser().resolve())


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    request = EvalRequest(
        models=tuple(args.models), text_path=args.text, n_ctx=args.ctx, threads=args.threads,
        n_prompt=args.pp, n_gen=args.tg, repeats=args.repeats, n_gpu_layers=args.gpu_layers,
        prompts=prompts_choice(args.prompts), answers=args.answers,
        answer_tokens=args.answer_tokens,
    )  # fmt: skip
    with Database.open_current(settings) as db:
        jobs = JobStore(db.engine)
        store = ModelStore(db.engine, settings.models_path)
        job_id = start_eval(settings, store, jobs, request, cli_actor(args))
        echo(f"started job {job_id}")
        if args.no_wait:
            return 0
        status = follow_with_bars(settings, jobs, [job_id])
        rows = [r for r in EvaluationStore(db.engine).latest() if r["model"] in args.models]
        for line in results_lines(rows):
            echo(line)
        prompt_set = FEEDBACK if request.prompts is None else Path(request.prompts).name
        entries = AnswerStore(db.engine).side_by_side(prompt_set, list(args.models))
        for line in answers_lines(entries, list(args.models)):
            echo(line)
        return status


def register(sub: SubParsers) -> None:
    """Hook `herd eval` into the `herd` parser."""
    p = command(sub, "eval", cmd_eval,
                "measure models: size, memory, speed (pp/tg), perplexity, as a job")  # fmt: skip
    p.add_argument("models", nargs="+", help="model names in the store")
    p.add_argument("--text", default=None, help="UTF-8 text for perplexity (default: shipped)")
    # Serving parameters, read as a deployment's are; the measurement's own defaults.
    add_serving_flag(p, "n_ctx", flag="--ctx", default=512,
                     help="context and window size (default 512)")  # fmt: skip
    add_serving_flag(p, "threads", help="CPU threads (default: all)")
    p.add_argument("--pp", type=int, default=512, help="prompt tokens for prefill speed")
    p.add_argument("--tg", type=int, default=128, help="tokens generated for decode speed")
    p.add_argument("--repeats", type=int, default=2, help="speed runs after a warm-up")
    add_serving_flag(p, "n_gpu_layers", flag="--gpu-layers",
                     help="layers offloaded to the GPU (-1: all; default 0: CPU); peak VRAM "
                     "is then measured with nvidia-smi")  # fmt: skip
    p.add_argument(
        "--prompts", default=None, metavar="SET",
        help="prompt set for reference log-likelihood and greedy answers: 'feedback' (the "
        "thumbs-up and corrected answers; the default, used when there are any) or a JSONL "
        "file of {\"prompt\": ..., \"reference\": ...} objects",
    )  # fmt: skip
    p.add_argument(
        "--answers",
        type=int,
        default=None,
        help="prompts each model answers greedily (default HERD_EVAL_ANSWER_PROMPTS)",
    )
    p.add_argument(
        "--answer-tokens",
        type=int,
        default=None,
        help="the most tokens per answer (default HERD_EVAL_ANSWER_TOKENS)",
    )
    p.add_argument("--by", default=None, help="who starts it (default: the OS user)")
    p.add_argument("--no-wait", action="store_true", help="start and return")
