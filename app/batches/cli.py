"""`herd batch ...`: submit, follow, cancel and download OpenAI-compatible batches."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from tqdm import tqdm

from app.batches.files import FileError
from app.batches.jsonl import ENDPOINTS, with_alias
from app.batches.owner import OPERATOR
from app.batches.progress import describe
from app.batches.records import BatchError, BatchView
from app.batches.service import cancel_batch, create_batch_from_file, get_batch, wait_batch
from app.batches.store import BatchStore
from app.common.cli_output import echo
from app.common.cli_parser import SubParsers, command, group
from app.config import Settings
from app.control.audit import cli_actor
from app.db.database import Database


def follow_batch(db: Database, batch_id: str) -> BatchView:
    """Wait for the batch with a progress bar; Ctrl-C leaves the batch running."""
    bar = tqdm(total=get_batch(db.engine, batch_id).total, desc=batch_id, unit="line")

    def update(view: BatchView) -> None:
        bar.total = view.total
        bar.set_postfix_str(f"{view.status}, {view.failed} failed", refresh=False)
        bar.update(view.done - bar.n)

    try:
        return wait_batch(db.engine, batch_id, poll_s=0.5, on_progress=update)
    finally:
        bar.close()


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise FileError(f"no file {path}")
    data = path.read_bytes()
    if args.alias:
        data = with_alias(data, args.alias)
    actor = cli_actor(args)
    with Database.open_current(settings) as db:
        batch_id = create_batch_from_file(
            settings, db.engine, io.BytesIO(data), filename=path.name, endpoint=args.endpoint,
            created_by=actor.who, actor=actor,
        )  # fmt: skip
        echo(f"submitted {batch_id}")
        if args.no_wait:
            return 0
        try:
            view = follow_batch(db, batch_id)
        except KeyboardInterrupt:
            echo(f"stopped following; the batch goes on (`herd batch status {batch_id}`)")
            return 130
        echo(describe(view))
        return 0 if view.status == "completed" else 1


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        view = get_batch(db.engine, args.batch_id)
    if args.json:
        echo(json.dumps(view.openai(), indent=2))
    else:
        echo(describe(view))
    return 0


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        view = cancel_batch(db.engine, args.batch_id, cli_actor(args))
    echo(f"{view.id}: {view.status}")
    return 0


def cmd_download(settings: Settings, args: argparse.Namespace) -> int:
    out = Path(args.output)
    with Database.open_current(settings) as db:
        view = get_batch(db.engine, args.batch_id)
        if not view.finished:
            raise BatchError(
                f"batch {view.id} is {view.status}; its files are written when it ends"
            )
        store = BatchStore(db.engine)
        out.mkdir(parents=True, exist_ok=True)
        for purpose, suffix in (("batch_output", "output"), ("batch_errors", "errors")):
            lines = store.rendered(view.id, purpose)
            target = out / f"{view.id}_{suffix}.jsonl"
            target.write_bytes(b"".join(lines))
            echo(f"{target} ({len(lines)} lines)")
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        views, _ = BatchStore(db.engine).page(OPERATOR, limit=args.limit)
    for view in views:
        echo(f"{view.created_at:%Y-%m-%d %H:%M} {view.endpoint:22} {describe(view)}")
    return 0


def register(sub: SubParsers) -> None:
    """Hook `herd batch ...` into the `herd` parser."""
    batch = group(sub, "batch", "OpenAI-compatible batches")
    submit = command(batch, "submit", cmd_submit, "run a JSONL file of requests as a batch")
    submit.add_argument("file", help="JSONL: one {custom_id, method, url, body} per line")
    submit.add_argument("--alias", default=None, help="send every line to this model alias")
    submit.add_argument("--endpoint", default=ENDPOINTS[0], choices=ENDPOINTS)
    submit.add_argument("--by", default=None, help="who submits it (default: the OS user)")
    submit.add_argument("--no-wait", action="store_true", help="submit and return")
    status = command(batch, "status", cmd_status, "a batch's status and progress")
    status.add_argument("batch_id")
    status.add_argument("--json", action="store_true", help="print OpenAI's batch object")
    cancel = command(batch, "cancel", cmd_cancel, "cancel a batch (lines in flight finish)")
    cancel.add_argument("batch_id")
    cancel.add_argument("--by", default=None, help="who cancels it (default: the OS user)")
    download = command(batch, "download", cmd_download, "write a batch's output and error files")
    download.add_argument("batch_id")
    download.add_argument("-o", "--output", default=".", help="folder (default: here)")
    listing = command(batch, "list", cmd_list, "the newest batches")
    listing.add_argument("--limit", type=int, default=20)
