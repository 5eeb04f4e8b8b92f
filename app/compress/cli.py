"""`herd models quantize`: quantized (and layer-pruned) variants of a model, as jobs."""

from __future__ import annotations

import argparse

from app.common.cli_output import echo
from app.common.cli_parser import SubParsers, command
from app.compress.quantize import QuantizeRequest, parse_layers, start_quantize
from app.config import Settings
from app.control.audit import cli_actor
from app.db.database import Database
from app.jobs.cli import follow_with_bars
from app.jobs.store import JobStore
from app.store.catalog import ModelStore


def cmd_models_quantize(settings: Settings, args: argparse.Namespace) -> int:
    layers = parse_layers(args.prune_layers or "")
    requests = [
        QuantizeRequest(args.source, ftype, layers, args.allow_requantize, args.threads or 0)
        for ftype in args.type
    ]
    with Database.open_current(settings) as db:
        store = JobStore(db.engine)
        ids = start_quantize(
            settings, ModelStore(db.engine, settings.models_path), store, requests,
            cli_actor(args),
        )  # fmt: skip
        echo("started " + ", ".join(f"job {i}" for i in ids))
        if args.no_wait:
            return 0
        return follow_with_bars(settings, store, ids)


def register(models: SubParsers) -> None:
    """Hook `herd models quantize` into the `herd` parser."""
    quantize = command(
        models,
        "quantize",
        cmd_models_quantize,
        "write quantized (and layer-pruned) variants of a model, as jobs",
    )
    quantize.add_argument("source", help="the model's name in the store")
    quantize.add_argument(
        "--type", action="append", required=True, help="file type, e.g. Q4_K_M (repeatable)"
    )
    quantize.add_argument("--prune-layers", default=None, help="layers to drop, e.g. 3,7")
    quantize.add_argument(
        "--allow-requantize", action="store_true", help="allow an already quantized source"
    )
    quantize.add_argument("--threads", type=int, default=None, help="threads (default: all)")
    quantize.add_argument("--by", default=None, help="who starts it (default: the OS user)")
    quantize.add_argument("--no-wait", action="store_true", help="start and return")
