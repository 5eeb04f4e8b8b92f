"""`herd models list`, and how the model commands show a scan and hashing progress."""

from __future__ import annotations

import argparse
import json
from contextlib import AbstractContextManager
from typing import Any

from app.common.cli_output import echo, progress_bars
from app.common.cli_parser import SubParsers, command
from app.config import Settings
from app.db.database import Database
from app.engine.serving import add_serving_flag
from app.store.catalog import ModelStore, ProgressCallback, describe_model
from app.store.estimate import format_bytes


def hash_progress() -> AbstractContextManager[ProgressCallback]:
    """A tqdm bar per file being hashed (shown for files big enough to wait on)."""
    return progress_bars(64 * 1024 * 1024, "B", label="sha256 {}", unit_scale=True)


def print_scan(store: ModelStore, report: Any) -> None:
    """A scan's counts, and why each invalid file is invalid."""
    echo(
        f"model store {store.root}: {len(report.valid)} valid, {len(report.invalid)} invalid, "
        f"{len(report.missing)} missing"
    )
    for name, reason in report.invalid.items():
        echo(f"  invalid  {name}: {reason}")


def cmd_models_list(settings: Settings, args: argparse.Namespace) -> int:
    with Database.open_current(settings) as db:
        models = ModelStore(db.engine, settings.models_path).list()
        rows = [describe_model(m, args.n_gpu_layers, args.n_ctx) for m in models]
    if args.json:
        echo(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        echo(f"no models in {settings.models_path}; add one with `herd models add PATH`")
        return 0
    echo(f"{'NAME':40} {'STATUS':8} {'ARCH':10} {'QUANT':8} {'PARAMS':>8} {'SIZE':>10} "
         f"{'CTX':>7} {'RAM EST':>10} {'VRAM EST':>10}")  # fmt: skip
    for row in rows:
        est = row.get("estimate") or {}
        params = row["parameter_count"]
        echo(
            f"{row['name'][:40]:40} {row['status']:8} {(row['architecture'] or '-')[:10]:10} "
            f"{(row['file_type'] or '-')[:8]:8} "
            f"{(f'{params / 1e6:.0f}M' if params else '-'):>8} "
            f"{format_bytes(row['size_bytes']):>10} {row['context_length'] or '-':>7} "
            f"{format_bytes(est.get('ram_bytes')):>10} {format_bytes(est.get('vram_bytes')):>10}"
        )
        if row["error"]:
            echo(f"    {row['error']}")
    return 0


def register(models: SubParsers) -> None:
    """`herd models list` (the `models` group is made by whoever adds its other commands)."""
    listing = command(models, "list", cmd_models_list, "list the models in the store")
    listing.add_argument("--json", action="store_true", help="print JSON")
    # The estimate's inputs are serving parameters: read as a deployment's are.
    add_serving_flag(listing, "n_gpu_layers", help="layers offloaded for the memory estimate")
    add_serving_flag(listing, "n_ctx", default=None, help="context for the estimate")
