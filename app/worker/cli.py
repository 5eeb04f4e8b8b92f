"""`herd worker`: serve one GGUF model over the OpenAI API."""

from __future__ import annotations

import argparse

from app.common.cli_output import warn
from app.common.cli_parser import SubParsers, command
from app.config import Settings
from app.engine.serving import add_serving_flags, serving_values_from
from app.worker.options import DEFAULT_KV_SNAPSHOT_MAX_MB


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here: it loads llama_cpp, which no other command needs to wait for.
    from app.worker.options import WorkerOptions
    from app.worker.process import WorkerStartError, run_worker

    try:
        options = WorkerOptions(
            model=args.model,
            host=args.host,
            port=args.port,
            alias=args.alias,
            deployment_id=args.deployment_id,
            max_queue=args.max_queue,
            log_path=args.log_path,
            advertise_url=args.advertise_url or settings.advertise_url,
            join=args.join,
            kv_snapshots=args.kv_snapshots,
            kv_snapshot_max_mb=args.kv_snapshot_max_mb,
            **serving_values_from(args),
        )
    except ValueError as exc:
        warn(f"herd worker: {exc}")
        return 2
    try:
        return run_worker(settings, options)
    except (WorkerStartError, OSError) as exc:
        warn(f"herd worker: {exc}")
        return 1


def register(sub: SubParsers) -> None:
    """`herd worker`: its own flags, and one per serving parameter."""
    worker = command(sub, "worker", cmd_worker, "serve one GGUF model over the OpenAI API")
    worker.add_argument(
        "--model", required=True, help="a .gguf file, or the name of a model in the store"
    )
    worker.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    worker.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    # llama.cpp's settings: one flag per ServingParams field, its default and help included.
    add_serving_flags(worker)
    worker.add_argument("--alias", default=None, help="model name clients use (default: stem)")
    worker.add_argument(
        "--deployment-id", type=int, default=None, help="the deployment it serves (supervisor)"
    )
    worker.add_argument(
        "--max-queue", type=int, default=16, help="requests that may wait for a slot (default 16)"
    )
    worker.add_argument(
        "--log-path", default=None, help="where this worker's output goes, recorded in its row"
    )
    worker.add_argument(
        "--advertise-url",
        default=None,
        help=(
            "URL other hosts reach this worker at, http://host[:port] (without a port the real "
            "port is added; HERD_ADVERTISE_URL); default: from --host, the host's primary "
            "address for 0.0.0.0"
        ),
    )
    worker.add_argument(
        "--no-kv-snapshots",
        dest="kv_snapshots",
        action="store_false",
        help=(
            "do not save hot prompt prefixes' KV cache under HERD_HOME/kv_snapshots at stop "
            "(and once a prefix is reused 3 times), nor restore them at start; by default a "
            "new worker of the same model file and settings restores them, so a shared system "
            "prompt is not computed again after a restart or a roll"
        ),
    )
    worker.add_argument(
        "--kv-snapshot-max-mb",
        type=int,
        default=DEFAULT_KV_SNAPSHOT_MAX_MB,
        help=(
            "disk the KV snapshots may take, all models together; least recently used go "
            f"first (default {DEFAULT_KV_SNAPSHOT_MAX_MB})"
        ),
    )
    worker.add_argument(
        "--join",
        action="store_true",
        help=(
            "serve the deployment for (--alias, --model), creating an external one (started "
            "by Kubernetes or you, never by a supervisor) if there is none"
        ),
    )
