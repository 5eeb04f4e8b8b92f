"""`herd dataset ...`: build, distill, augment, list and show datasets for retraining."""

from __future__ import annotations

import argparse
import getpass
import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from app.common.cli_output import echo, progress_bars, utc_time, warn
from app.common.cli_parser import SubParsers, command, group
from app.config import Settings
from app.control.audit import cli_actor
from app.datasets.build import BuildSpec, build_dataset, check_name, datasets_root
from app.datasets.cleaning import CleaningOptions, StepProgress
from app.datasets.rows import DatasetError, DatasetKind
from app.datasets.selection import (
    LogSelection,
    Rating,
    Selected,
    read_upload,
    select_from_log,
)
from app.datasets.splits import SplitRatios
from app.datasets.store import DatasetInfo, DatasetStore
from app.datasets.teacher import GenerationSettings
from app.db.database import Database
from app.store.catalog import ModelStore


def _warn(message: str) -> None:
    warn(f"herd dataset: {message}")


def step_bars() -> AbstractContextManager[StepProgress]:
    """A tqdm bar per long step (selection, near-duplicate hashing, batches)."""
    return progress_bars(5000, "row")


def cleaning_options(args: argparse.Namespace) -> CleaningOptions:
    languages = tuple(x.strip() for x in (args.language or "").split(",") if x.strip())
    return CleaningOptions(
        drop_empty_answers=not args.keep_empty_answers,
        drop_refusals=not args.keep_refusals,
        min_prompt_chars=args.min_prompt_chars,
        max_prompt_chars=args.max_prompt_chars,
        min_answer_chars=args.min_answer_chars,
        max_answer_chars=args.max_answer_chars,
        languages=languages,
        keep_unknown_language=not args.drop_unknown_language,
        redact=not args.no_redact,
        exact_dedup=not args.no_dedup,
        near_dedup=not args.no_near_dedup,
        near_dup_threshold=args.near_dup_threshold,
    )


def build_spec(args: argparse.Namespace, kind: DatasetKind) -> BuildSpec:
    return BuildSpec(
        name=args.name,
        created_by=args.by or getpass.getuser(),
        kind=kind,
        cleaning=cleaning_options(args),
        ratios=SplitRatios.parse(args.split),
        seed=args.seed,
    )


def read_file(args: argparse.Namespace) -> Selected:
    """The rows of --from-file (DatasetError naming every bad line)."""
    path = Path(args.from_file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from exc
    return read_upload(path.name, data)


def select(
    db: Database, settings: Settings, args: argparse.Namespace, progress: StepProgress
) -> Selected:
    """The rows named by the source flags: --from-file, or the request-log filters."""
    if args.from_file:
        return read_file(args)
    return select_from_log(
        db.engine, log_selection(db, settings, args), lambda d, t: progress("select", d, t)
    )


def log_selection(db: Database, settings: Settings, args: argparse.Namespace) -> LogSelection:
    """The request-log filters of the flags (model names checked against the store)."""
    models = {m.name: m.id for m in ModelStore(db.engine, settings.models_path).list()}
    unknown = [name for name in args.model if name not in models]
    if unknown:
        raise DatasetError(f"no model named {', '.join(unknown)}")
    return LogSelection(
        start=args.since,
        end=args.until,
        aliases=tuple(args.source_aliases),
        model_ids=tuple(models[name] for name in args.model),
        rating=Rating(args.rating),
        tags=tuple(args.tag),
        include_synthetic=args.include_synthetic,
        include_cut=args.include_cut,
        limit=args.limit,
    )


def print_report(info: DatasetInfo) -> None:
    echo(f"{'STEP':18} {'IN':>9} {'REMOVED':>9} {'CHANGED':>9} {'OUT':>9}  WHAT")
    for s in info.steps:
        echo(
            f"{s['step']:18} {s['rows_in']:>9} {s['removed']:>9} {s['changed']:>9} "
            f"{s['rows_out']:>9}  {s['description']}"
        )
    splits = ", ".join(f"{k} {v}" for k, v in info.split_rows.items())
    echo(f"dataset {info.name!r} ({info.kind}): {info.rows} rows ({splits}) in {info.path}")


def cmd_build(settings: Settings, args: argparse.Namespace) -> int:
    try:
        spec = build_spec(args, DatasetKind.SFT)
        with Database.open_current(settings) as db, step_bars() as progress:
            root = datasets_root(settings.home_dir)
            check_name(db.engine, root, spec.name)
            selected = select(db, settings, args, progress)
            info = build_dataset(db.engine, root, spec, selected, progress, cli_actor(args))
    except DatasetError as exc:
        _warn(str(exc))
        return 2
    print_report(info)
    return 0


def generation_settings(args: argparse.Namespace, alias: str) -> GenerationSettings:
    return GenerationSettings(
        alias=alias,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.gen_seed,
        system_prompt=args.system_prompt,
        keep_cut=args.include_cut,
    )


def _run_as_job(settings: Settings, args: argparse.Namespace, kind: DatasetKind) -> int:
    """Start the distillation or augmentation as a `dataset` job, then follow it with a
    progress bar (unless --no-wait) and print the dataset's report."""
    from app.datasets.job import DatasetJobRequest, start_dataset_job
    from app.jobs.cli import follow_with_bars
    from app.jobs.store import JobStore

    try:
        spec = build_spec(args, kind)
        alias = args.teacher if kind is DatasetKind.DISTILL else args.alias
        with Database.open_current(settings) as db:
            if args.from_file:
                read_file(args)  # every bad line is reported now, not by the job
                source: dict[str, Any] = {"upload": Path(args.from_file).resolve()}
            else:
                source = {"selection": log_selection(db, settings, args)}
            request = DatasetJobRequest(
                spec,
                generation_settings(args, alias),
                n=getattr(args, "n", 3),
                resume=args.batch,
                **source,
            )
            job_id = start_dataset_job(settings, db.engine, request, cli_actor(args))
            echo(f"started job {job_id} ({kind.value} dataset {spec.name!r})")
            if args.no_wait:
                return 0
            code = follow_with_bars(settings, JobStore(db.engine), [job_id], args.timeout)
            info = DatasetStore(db.engine).get(spec.name) if code == 0 else None
    except DatasetError as exc:
        _warn(str(exc))
        return 2
    if info is not None:
        print_report(info)
    return code


def cmd_distill(settings: Settings, args: argparse.Namespace) -> int:
    return _run_as_job(settings, args, DatasetKind.DISTILL)


def cmd_augment(settings: Settings, args: argparse.Namespace) -> int:
    return _run_as_job(settings, args, DatasetKind.AUGMENT)


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        infos = DatasetStore(db.engine).list()
    if args.json:
        echo(
            json.dumps([{**i.__dict__, "path": str(i.path)} for i in infos], indent=2, default=str)
        )
        return 0
    if not infos:
        echo("no datasets yet; build one with `herd dataset build NAME ...`")
        return 0
    echo(
        f"{'NAME':30} {'KIND':8} {'ROWS':>8} {'TRAIN':>8} {'VAL':>7} {'TEST':>7} {'CREATED':20} BY"
    )
    for i in infos:
        s = i.split_rows
        echo(
            f"{i.name[:30]:30} {i.kind:8} {i.rows:>8} {s.get('train', 0):>8} "
            f"{s.get('validation', 0):>7} {s.get('test', 0):>7} "
            f"{i.created_at:%Y-%m-%d %H:%M:%S}  {i.created_by}"
        )
    return 0


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        info = DatasetStore(db.engine).get(args.name)
    if info is None:
        _warn(f"no dataset named {args.name!r} (`herd dataset list`)")
        return 1
    if args.json:
        echo(json.dumps(info.card, indent=2, ensure_ascii=False))
        return 0
    echo(f"source: {json.dumps(info.source, ensure_ascii=False)}")
    for key in ("teacher", "augmentation"):
        if info.card.get(key):
            echo(f"{key}: {json.dumps(info.card[key], ensure_ascii=False)}")
    echo(
        f"seed {info.card.get('seed')}, ratios {info.card.get('ratios')}, "
        f"created by {info.created_by} at {info.created_at:%Y-%m-%d %H:%M:%S}"
    )
    print_report(info)
    return 0


def add_source_flags(p: argparse.ArgumentParser, alias_flag: str = "--alias") -> None:
    """Where the prompts come from: --from-file or request-log filters (the alias filter is
    --source-alias for augment, whose --alias names the paraphrasing alias)."""
    # The one parser of ISO times on the command line (what `herd export` takes too).

    p.add_argument(
        "--from-file", default=None, help="an uploaded .jsonl or .csv instead of the log"
    )
    p.add_argument(
        alias_flag,
        dest="source_aliases",
        action="append",
        default=[],
        help="only this alias (repeatable)",
    )
    p.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    p.add_argument("--since", type=utc_time, default=None, help="requests from (ISO)")
    p.add_argument("--until", type=utc_time, default=None, help="requests before (ISO)")
    p.add_argument(
        "--rating",
        choices=[r.value for r in Rating],
        default=Rating.ANY.value,
        help="by net rating: any (default), rated, up, down",
    )
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        help="only requests with this Feedback-review tag (repeatable: any of them)",
    )
    p.add_argument("--include-synthetic", action="store_true", help="include demo-traffic rows")
    p.add_argument(
        "--include-cut",
        action="store_true",
        help="keep answers that stopped at max_tokens (logged ones, and for distill/augment "
        "the batch's)",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many requests")


def add_build_flags(p: argparse.ArgumentParser) -> None:
    """Cleaning steps on/off, their limits, the splits, the seed, who builds it."""
    p.add_argument("name", help="dataset name: its folder under HERD_HOME/datasets/")
    p.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    p.add_argument("--no-near-dedup", action="store_true", help="keep near-duplicate prompts")
    p.add_argument(
        "--near-dup-threshold",
        type=float,
        default=0.8,
        help="Jaccard similarity of word 3-grams that counts as near (default 0.8)",
    )
    p.add_argument("--no-redact", action="store_true", help="keep emails, phones, card numbers")
    p.add_argument("--keep-empty-answers", action="store_true", help="keep empty answers")
    p.add_argument("--keep-refusals", action="store_true", help="keep answers that decline")
    p.add_argument("--min-prompt-chars", type=int, default=1)
    p.add_argument("--max-prompt-chars", type=int, default=16_000)
    p.add_argument("--min-answer-chars", type=int, default=1)
    p.add_argument("--max-answer-chars", type=int, default=32_000)
    p.add_argument(
        "--language",
        default=None,
        help="keep prompts in these languages, e.g. en or en,de (default: all)",
    )
    p.add_argument(
        "--drop-unknown-language",
        action="store_true",
        help="with --language: also drop prompts too short to tell",
    )
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test ratios")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--by", default=None, help="who builds it (default: the OS user)")


def add_generation_flags(p: argparse.ArgumentParser, temperature: float, max_tokens: int) -> None:
    """The sampling settings of every batch line (recorded on the card)."""
    p.add_argument(
        "--max-tokens", type=int, default=max_tokens, help=f"per answer (default {max_tokens})"
    )
    p.add_argument(
        "--temperature", type=float, default=temperature, help=f"default {temperature:g}"
    )
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--gen-seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--system-prompt", default=None, help="replaces the default instructions")
    p.add_argument(
        "--batch",
        default=None,
        help="pick up the batch an earlier run of this command left running (its id)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to follow the job (default: until it ends); it goes on after",
    )
    p.add_argument("--no-wait", action="store_true", help="start the job and return")


def register(sub: SubParsers) -> None:
    """Hook `herd dataset ...` into the `herd` parser."""
    dataset = group(sub, "dataset", "datasets for retraining")
    build = command(
        dataset,
        "build",
        cmd_build,
        "clean, split and write an SFT dataset from the request log or a file",
    )
    add_build_flags(build)
    add_source_flags(build)
    distill = command(
        dataset,
        "distill",
        cmd_distill,
        "a teacher alias answers the selected prompts (as a batch): an SFT dataset for a student",
    )
    add_build_flags(distill)
    add_source_flags(distill)
    distill.add_argument("--teacher", required=True, help="the alias whose answers to keep")
    add_generation_flags(distill, temperature=0.0, max_tokens=512)
    augment = command(
        dataset,
        "augment",
        cmd_augment,
        "the selected rows plus N paraphrases of each prompt by an alias (as a batch)",
    )
    add_build_flags(augment)
    add_source_flags(augment, alias_flag="--source-alias")
    augment.add_argument("--alias", dest="alias", required=True, help="the alias that paraphrases")
    augment.add_argument("--n", type=int, default=3, help="paraphrases per prompt (default 3)")
    add_generation_flags(augment, temperature=0.9, max_tokens=256)
    listing = command(dataset, "list", cmd_list, "the datasets built so far")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = command(dataset, "show", cmd_show, "a dataset's source, steps with counts, splits")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the card's facts as JSON")
