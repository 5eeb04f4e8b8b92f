"""Shared fixtures: a real PostgreSQL (embedded, or HERD_TEST_DATABASE_URL) and real GGUF files.

One server per test session; each test that needs a schema gets its own database, cloned
from a template migrated once, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import migrate
from app.db.database import Database
from app.db.embedded import EmbeddedPostgres
from app.db.engine import sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[1]


def with_database(url: str, name: str) -> str:
    """url pointing at another database on the same server."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(
    process: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout_s: float = 20
) -> None:
    """Ask a child process to stop with signum; kill it if it is still there after timeout_s."""
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_herd(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run the `herd` command as a user would, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


class PgServer:
    """The test session's PostgreSQL server; makes and drops throwaway databases."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._admin = create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")

    def create_database(self, template: str | None = None) -> str:
        name = f"herd_test_{uuid.uuid4().hex[:12]}"
        clause = f" TEMPLATE {template}" if template else ""
        with self._admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}{clause}"))
        return name

    def drop_database(self, name: str) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    def close(self) -> None:
        self._admin.dispose()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    external = os.environ.get("HERD_TEST_DATABASE_URL")
    embedded = None
    if external:
        url = external
    else:
        embedded = EmbeddedPostgres(tmp_path_factory.mktemp("herd-home") / "pgdata")
        url = embedded.start()
    server = PgServer(url)
    yield server
    server.close()
    if embedded is not None:
        embedded.release()


@pytest.fixture(scope="session")
def migrated_template(pg_server: PgServer) -> Iterator[str]:
    name = pg_server.create_database()
    migrate.upgrade(with_database(pg_server.url, name))
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def empty_db_url(pg_server: PgServer) -> Iterator[str]:
    """A URL to a new, empty database."""
    name = pg_server.create_database()
    yield with_database(pg_server.url, name)
    pg_server.drop_database(name)


@pytest.fixture
def db_url(pg_server: PgServer, migrated_template: str) -> Iterator[str]:
    """A URL to a new database with the schema at head."""
    name = pg_server.create_database(template=migrated_template)
    yield with_database(pg_server.url, name)
    pg_server.drop_database(name)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    yield db
    db.close()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models_store"
    path.mkdir()
    return path


@pytest.fixture
def herd_env(db_url: str, models_dir: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for a `herd` process on this test's database and model store."""
    return {
        **os.environ,
        "HERD_DATABASE_URL": db_url,
        "HERD_MODELS_DIR": str(models_dir),
        "HERD_HOME": str(tmp_path / "herd-home"),
    }


@pytest.fixture
def dashboard_env(
    monkeypatch: pytest.MonkeyPatch, db_url: str, models_dir: Path, tmp_path: Path
) -> None:
    """Environment for dashboard pages under AppTest, on this test's database and store."""
    monkeypatch.setenv("HERD_DATABASE_URL", db_url)
    monkeypatch.setenv("HERD_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("HERD_HOME", str(tmp_path / "home"))
    # A port nothing listens on, whatever runs on this machine: the Chat page finds no gateway.
    monkeypatch.setenv("HERD_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")


def run_page(name: str, role: Any, user: str = "olivia", timeout_s: float = 60) -> Any:
    """Run pages/NAME under AppTest as an account of that role (see log_in_as); a page that
    raises fails the test."""
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(REPO_ROOT / "pages" / name), default_timeout=timeout_s)
    log_in_as(app, user, role)
    app.run()
    assert not app.exception, app.exception
    return app


def submit_login(app: Any, name: str, password: str) -> None:
    """Fill the login form of an AppTest page and submit it."""
    app.text_input(key="login_name").input(name)
    app.text_input(key="login_password").input(password)
    app.button[0].click()  # the form's submit button
    app.run()


def log_in_as(app: Any, name: str, role: Any, logged_in_at: float | None = None) -> None:
    """Log an AppTest session in as an account of that role, creating the account in the
    test's database (HERD_DATABASE_URL) when it is reachable: pages read it on every run."""
    import time

    from sqlalchemy.exc import OperationalError

    from app.control.accounts import AccountError, Accounts, LoggedIn

    engine = create_engine(sqlalchemy_url(os.environ["HERD_DATABASE_URL"]))
    try:
        accounts = Accounts(engine)
        try:
            accounts.add(name, "password-for-tests", role)
        except AccountError:
            accounts.set_role(name, role)
    except OperationalError:
        pass  # the database is away (outage tests): the page keeps the session as it is
    finally:
        engine.dispose()
    at = time.time() if logged_in_at is None else logged_in_at
    app.session_state["herd_operator"] = LoggedIn(name, role, at)


@pytest.fixture
def settings(tmp_path: Path, db_url: str, models_dir: Path) -> Settings:
    return Settings(home=tmp_path / "herd-home", database_url=db_url, models_dir=models_dir)


# A tiny llama-shaped model: small enough to write in milliseconds, shaped like the real thing.
TINY = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "n_head_kv": 2,
    "n_ff": 128,
    "n_vocab": 96,
    "n_ctx_train": 512,
}


def write_tiny_gguf(path: Path, *, tied_output: bool = False, chat_template: bool = True) -> Path:
    """Write a small llama-architecture GGUF (f32 tensors) with the gguf package."""
    import gguf

    t = TINY
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-test")
    writer.add_block_count(t["n_layer"])
    writer.add_context_length(t["n_ctx_train"])
    writer.add_embedding_length(t["n_embd"])
    writer.add_feed_forward_length(t["n_ff"])
    writer.add_head_count(t["n_head"])
    writer.add_head_count_kv(t["n_head_kv"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    tokens = [f"t{i}" for i in range(t["n_vocab"])]
    writer.add_token_list(tokens)
    writer.add_token_types([1] * t["n_vocab"])
    if chat_template:
        writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    e, ff, v = t["n_embd"], t["n_ff"], t["n_vocab"]
    kv = e // t["n_head"] * t["n_head_kv"]
    tensor("token_embd.weight", v, e)
    for i in range(t["n_layer"]):
        tensor(f"blk.{i}.attn_norm.weight", e)
        tensor(f"blk.{i}.attn_q.weight", e, e)
        tensor(f"blk.{i}.attn_k.weight", kv, e)
        tensor(f"blk.{i}.attn_v.weight", kv, e)
        tensor(f"blk.{i}.attn_output.weight", e, e)
        tensor(f"blk.{i}.ffn_norm.weight", e)
        tensor(f"blk.{i}.ffn_gate.weight", ff, e)
        tensor(f"blk.{i}.ffn_up.weight", ff, e)
        tensor(f"blk.{i}.ffn_down.weight", e, ff)
    tensor("output_norm.weight", e)
    if not tied_output:
        tensor("output.weight", v, e)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Callable[..., Path]:
    """Factory: tiny_gguf(name, **options) writes a valid tiny GGUF under tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)

    def make(name: str = "tiny.gguf", **options: bool) -> Path:
        return write_tiny_gguf(src / name, **options)

    return make


# Helpers for real worker processes live in tests/worker_process.py, reusable by any test.
from tests.worker_process import WorkerLauncher  # noqa: E402


@pytest.fixture
def worker_launcher(tmp_path: Path, db_url: str, models_dir: Path) -> Iterator[WorkerLauncher]:
    """Starts real `herd worker` processes on this test's database; kills them afterwards."""
    launcher = WorkerLauncher(db_url=db_url, home=tmp_path / "herd-home", models_dir=models_dir)
    yield launcher
    launcher.kill_all()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An embedded server of this test's own (pgdata, URL), migrated: a test may stop and
    start it without disturbing any other test."""
    from tests.gateway_harness import embedded_postgres

    pgdata = tmp_path / "pg" / "pgdata"
    pgdata.parent.mkdir()
    url = embedded_postgres(pgdata, "start")
    migrate.upgrade(url)
    yield pgdata, url
    embedded_postgres(pgdata, "stop")
