"""Run one worker process: register, serve HTTP while the model loads, heartbeat, deregister.

Life of the process and of its row in `workers`:
  start      row inserted with state 'loading' (url already final: the socket is bound first)
  loaded     state 'ready', with layers offloaded; or 'failed' with llama.cpp's reason, and
             the process exits 1 leaving that row for operators and the supervisor
  SIGTERM    state 'stopping'; running requests get worker_shutdown_grace_s to finish;
             the row is deleted and the process exits 0
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from app.common.host_memory import free_bytes_for
from app.common.listen import bind_listen_socket
from app.config import Settings
from app.control.deployments import Deployments
from app.db import migrate
from app.db.database import Database
from app.engine.cpu_buffers import ExtraBuffers
from app.engine.embedder import load_embedding_engine
from app.engine.errors import ModelLoadError
from app.engine.factory import make_engine
from app.engine.loader import LoadOptions
from app.engine.prefix_snapshots import SnapshotConfig
from app.engine.protocol import Engine
from app.engine.serving import DEFAULT_N_CTX
from app.store.estimate import default_slots
from app.store.gguf_file import InvalidGGUF, read_gguf
from app.worker.advertise import advertised_url
from app.worker.app import create_app
from app.worker.heartbeat import Heartbeat, Reporter
from app.worker.metrics import WorkerMetrics
from app.worker.model_source import ModelSource, ModelSourceError, resolve_model
from app.worker.options import WorkerOptions
from app.worker.registration import WorkerRegistry
from app.worker.state import WorkerState

logger = logging.getLogger(__name__)

# How long a 'failed' row keeps being retried when the database is unreachable at that moment.
FAILED_WRITE_DEADLINE_S = 10.0


class WorkerStartError(RuntimeError):
    """The worker cannot start at all (no row is written); the message says why."""


class WorkerServer(uvicorn.Server):
    """uvicorn, except that SIGTERM/SIGINT are this worker's normal way to stop.

    uvicorn re-raises a caught signal after its shutdown, which would end the process by
    the signal before the row is deleted; here the worker finishes its own exit instead.
    """

    def __init__(self, config: uvicorn.Config, state: WorkerState) -> None:
        super().__init__(config)
        self.worker_state = state

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.worker_state.set_stopping()
        super().handle_exit(sig, frame)


def effective_n_ctx(requested: int, trained: int | None) -> int:
    """n_ctx to load with: 0 means the trained context; more than trained is capped to it."""
    if requested == 0:
        return trained or DEFAULT_N_CTX
    if trained and requested > trained:
        logger.warning(
            "--n-ctx %d is beyond the model's trained context of %d tokens; using %d",
            requested,
            trained,
            trained,
        )
        return trained
    return requested


class ModelLoader:
    """Validates the GGUF, loads it on a thread, and reports the outcome."""

    def __init__(
        self,
        source: ModelSource,
        options: WorkerOptions,
        state: WorkerState,
        reporter: Reporter,
        server: uvicorn.Server,
        extra_buffers: ExtraBuffers = ExtraBuffers.AUTO,
        snapshots: SnapshotConfig | None = None,
    ) -> None:
        self.source = source
        self.snapshots = snapshots
        self.extra_buffers = extra_buffers
        self.options = options
        self.state = state
        self.reporter = reporter
        self.server = server
        self.thread = threading.Thread(target=self._run, name="herd-load")

    def _fail(self, reason: str) -> None:
        logger.error("model %s failed to load: %s", self.source.path, reason)
        self.state.set_failed(reason)
        self.reporter.publish_until(FAILED_WRITE_DEADLINE_S)
        self.server.should_exit = True

    def _run(self) -> None:
        options = self.options
        try:
            # Nothing reaches llama.cpp before the header and tensor table check out.
            gguf = read_gguf(self.source.path)
        except InvalidGGUF as exc:
            self._fail(f"not a valid GGUF: {exc}")
            return
        n_ctx = effective_n_ctx(options.n_ctx, gguf.context_length)
        slots = options.parallel or default_slots(
            gguf.layout,
            options.n_gpu_layers,
            n_ctx,
            free_bytes_for(options.n_gpu_layers, options.main_gpu),
        )
        load = LoadOptions(
            self.source.path,
            **(options.serving_values() | {"n_ctx": n_ctx, "parallel": slots}),
            extra_buffers=self.extra_buffers,
        )
        try:
            engine: Engine
            if options.embeddings:
                engine = load_embedding_engine(load, options.pooling, options.max_queue)
            else:
                # Batched across --parallel slots; falls back to one slot (logged) if not.
                engine = make_engine(load, max_queue=options.max_queue, snapshots=self.snapshots)
        except ModelLoadError as exc:
            self._fail(str(exc))
            return
        except Exception as exc:  # anything else llama-cpp-python raises is a load failure too
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        self.state.set_ready(engine)
        self.reporter.publish()
        info = engine.info
        logger.info(
            "ready: %s serves %r (n_ctx %d, %d/%d layers on GPU, GPU offload %s, %.0f ms load)",
            self.reporter.url,
            self.state.alias,
            info.n_ctx,
            info.n_gpu_layers_offloaded,
            info.n_layer + 1,
            "supported" if info.gpu_offload_supported else "not in this build (CPU only)",
            info.load_ms,
        )


def kv_snapshots(settings: Settings, options: WorkerOptions) -> SnapshotConfig | None:
    """Where this worker keeps its hot KV prefixes (None: --no-kv-snapshots)."""
    if not options.kv_snapshots:
        return None
    return SnapshotConfig(
        settings.home_dir / "kv_snapshots", max_bytes=options.kv_snapshot_max_mb << 20
    )


def run_worker(settings: Settings, options: WorkerOptions) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a failed load (exit 1)."""
    with Database.open(settings) as database:
        # Workers never migrate (many may start at once); they refuse an outdated schema.
        current, head = migrate.current_revision(database.engine), migrate.head_revision()
        if current != head:
            raise WorkerStartError(
                f"the database schema is at revision {current}, this herd needs {head}: "
                "run `herd db upgrade`"
            )
        return _run(settings, options, database)


def _run(settings: Settings, options: WorkerOptions, database: Database) -> int:
    sock = bind_listen_socket(options.host, options.port)
    url = advertised_url(options.host, sock.getsockname()[1], options.advertise_url)
    source: ModelSource | None = None
    problem: str | None = None
    try:
        source = resolve_model(database.engine, settings.models_path, options.model)
    except ModelSourceError as exc:
        problem = str(exc)
    model_path = source.path if source is not None else Path(options.model)
    alias = options.alias or model_path.stem
    deployment_id = options.deployment_id
    if options.join and source is not None:
        if source.model_id is None:
            problem = (
                f"--join needs a model from the store ({settings.models_path}), so that "
                f"every host names it alike; {model_path} is not in it: `herd models add` it"
            )
            source = None
        else:
            deployment_id, created = Deployments(database.engine).join_external(
                alias, source.model_id
            )
            logger.info("%s deployment %d for %r", "created external" if created else "joined",
                        deployment_id, alias)  # fmt: skip
    state = WorkerState(
        alias=alias,
        model_path=str(model_path),
        model_id=source.model_id if source is not None else None,
        deployment_id=deployment_id,
    )
    reporter = Reporter(
        WorkerRegistry(database.engine),
        state,
        host=socket.gethostname(),
        url=url,
        log_path=options.log_path,
    )
    if source is None:
        assert problem is not None
        sock.close()
        logger.error("%s", problem)
        state.set_failed(problem)
        reporter.register()
        return 1
    reporter.register()
    logger.info("worker %d at %s loading %s", reporter.worker_id, url, model_path)

    config = uvicorn.Config(
        create_app(settings, state, WorkerMetrics()),
        log_config=None,
        access_log=False,
        lifespan="off",
        # uvicorn waits with asyncio.wait_for, so 0 (cancel at once) and fractions work.
        timeout_graceful_shutdown=settings.worker_shutdown_grace_s,  # type: ignore[arg-type]
    )
    server = WorkerServer(config, state)
    heartbeat = Heartbeat(reporter, settings.worker_heartbeat_s)
    loader = ModelLoader(
        source,
        options,
        state,
        reporter,
        server,
        ExtraBuffers(settings.cpu_extra_buffers),
        snapshots=kv_snapshots(settings, options),
    )
    heartbeat.start()
    loader.thread.start()
    try:
        server.run(sockets=[sock])
    finally:
        state.set_stopping()
        reporter.publish()
        loader.thread.join()  # a load cannot be interrupted; let it end before freeing it
        heartbeat.stop()
        if state.engine is not None:
            state.engine.close()
        sock.close()
    if state.status == "failed":
        return 1
    reporter.deregister()
    logger.info("worker stopped; its row is removed")
    return 0
