"""`herd jobs ...`, and the progress bars every job-starting command follows its jobs with."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tqdm import tqdm

from app.common.cli_output import echo
from app.common.cli_parser import SubParsers, command, group
from app.config import Settings
from app.control.audit import cli_actor
from app.db.database import Database
from app.jobs.follow import follow, restart
from app.jobs.kinds import JobKinds
from app.jobs.runner import run_job
from app.jobs.store import JobStore, JobView


def follow_with_bars(
    settings: Settings, store: JobStore, ids: list[int], timeout_s: float | None = None
) -> int:
    bars: dict[int, tqdm[Any]] = {}
    for position, job_id in enumerate(ids):
        job = store.get(job_id)
        label = job.params.get("target") or f"{job.kind} {job_id}"
        bars[job_id] = tqdm(total=100, desc=f"job {job_id} {label}", position=position,
                            unit="%", bar_format="{l_bar}{bar}| {n:.0f}%")  # fmt: skip

    def update(view: JobView) -> None:
        bar = bars[view.id]
        bar.update(round(view.progress * 100, 1) - bar.n)

    try:
        final = follow(settings, store, ids, update, timeout_s=timeout_s)
    except (KeyboardInterrupt, TimeoutError) as exc:
        for bar in bars.values():
            bar.close()
        why = f"{exc}: " if isinstance(exc, TimeoutError) else ""
        echo(f"{why}stopped following; the jobs go on (`herd jobs list`, `herd jobs cancel ID`)")
        return 1 if isinstance(exc, TimeoutError) else 130
    for bar in bars.values():
        bar.close()
    failed = 0
    for view in final:
        if view.state == "succeeded":
            echo(f"job {view.id} succeeded: {json.dumps(view.result)}")
        else:
            failed += 1
            echo(f"job {view.id} {view.state}: {view.error}")
    return 1 if failed else 0


def cmd_jobs_run(settings: Settings, args: argparse.Namespace) -> int:
    job = run_job(settings, args.job_id, args.job_kinds)
    echo(f"job {job.id} {job.state}" + (f": {job.error}" if job.error else ""))
    return 0 if job.state == "succeeded" else 1


def cmd_jobs_list(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        store = JobStore(db.engine)
        store.reap_stale(settings.job_stale_s)
        jobs = store.recent(args.kind, args.limit)
    if args.json:
        echo(json.dumps([job.__dict__ for job in jobs], indent=2, default=str))
        return 0
    for job in jobs:
        what = job.params.get("target") or ""
        echo(f"{job.id:>6} {job.kind:10} {job.state:10} {job.progress * 100:5.1f}% "
               f"{job.started_by:12} {what} {job.error or ''}")  # fmt: skip
    return 0


def cmd_jobs_cancel(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        job = JobStore(db.engine).request_cancel(args.job_id, cli_actor(args))
    echo(f"job {job.id}: " + ("cancelled" if job.finished else "cancel requested"))
    return 0


def cmd_jobs_restart(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        store = JobStore(db.engine)
        new_id = restart(settings, store, args.job_id, cli_actor(args))
        echo(f"started job {new_id} (again of job {args.job_id})")
        if args.no_wait:
            return 0
        return follow_with_bars(settings, store, [new_id])


def register(sub: SubParsers, kinds: JobKinds) -> None:
    """Hook the job commands into the `herd` parser; `jobs run` runs kinds' handlers."""
    jobs = group(sub, "jobs", "background jobs")
    run = command(jobs, "run", cmd_jobs_run, "run a queued job in this process")
    run.add_argument("job_id", type=int)
    run.set_defaults(job_kinds=kinds)
    listing = command(jobs, "list", cmd_jobs_list, "the newest jobs")
    listing.add_argument("--kind", default=None, help="only this kind, e.g. quantize")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print JSON")
    cancel = command(jobs, "cancel", cmd_jobs_cancel, "cancel a queued or running job")
    cancel.add_argument("job_id", type=int)
    cancel.add_argument("--by", default=None, help="who cancels it (default: the OS user)")
    again = command(jobs, "restart", cmd_jobs_restart, "start a failed or cancelled job again")
    again.add_argument("job_id", type=int)
    again.add_argument("--by", default=None, help="who starts it (default: the OS user)")
    again.add_argument("--no-wait", action="store_true", help="start and return")
