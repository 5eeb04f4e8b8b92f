"""Hostile input, case by case (issue 21): text PostgreSQL cannot store, numbers past their
bounds, herd.yaml built to hurt, unknown fields. Each is refused at the door with where it
is (a 400 naming the field, or file:line), nothing is stored, and a database error is
answered by its real cause. Real gateway, real PostgreSQL, real `herd` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.control.accounts import AccountError, Accounts
from app.control.apply import Applier
from app.control.audit import Actor, Via, read_audit
from app.control.changes import Admin
from app.control.config_file import ConfigError, parse_config
from app.control.keys import KeyPolicy
from app.datasets.rows import DatasetError
from app.datasets.selection import read_upload
from app.db.database import Database
from app.db.embedded import running_url, stop_server
from app.evaluation.prompt_sets import PromptSetError, read_prompt_file
from app.gateway.errors import database_error
from tests.batch_harness import batch_gateway, chat_line
from tests.conftest import (
    REPO_ROOT,
    PgServer,
    free_port,
    run_herd,
    with_database,
    write_tiny_gguf,
)
from tests.gateway_harness import GatewayThread, gateway_settings

SETUP = Actor("setup", Via.CLI)
JSON = {"Content-Type": "application/json"}


def raw_json(value: Any) -> bytes:
    """value as JSON; a NUL or a lone surrogate goes as its \\u escape (valid JSON)."""
    return json.dumps(value).encode()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


# -- batch files and POST /v1/batches -------------------------------------------------------


def test_a_batch_line_the_database_cannot_store_is_refused_at_upload_naming_it(
    tmp_path: Path, db_url: str, database: Database
) -> None:
    lines = [
        chat_line("fine"),
        chat_line("nul", "a\u0000b"),
        chat_line("surrogate", "lone \ud800 half"),
        {**chat_line("x"), "custom_id": "id\u0000"},
        {**chat_line("key"), "body": {**chat_line("key")["body"], "metadata": {"\udc00": "v"}}},
    ]
    data = b"".join(raw_json(line) + b"\n" for line in lines)
    with batch_gateway(tmp_path, db_url) as gateway:
        upload = httpx.post(
            f"{gateway.v1}/files",
            files={"file": ("in.jsonl", data)},
            data={"purpose": "batch"},
            timeout=30,
        )
        error = error_of(upload, 400)
        assert error["code"] == "invalid_file"
        for expected in (
            "(4 errors)",
            "line 2: body.messages.[0].content: contains a NUL character at offset 1",
            "line 3: body.messages.[0].content: contains a lone UTF-16 surrogate (U+D800)",
            "line 4: custom_id: contains a NUL character",
            "line 5: body.metadata: a key contains a lone UTF-16 surrogate (U+DC00)",
        ):
            assert expected in error["message"], error["message"]

        # POST /v1/batches: unknown fields and unstorable text are 400s naming the field.
        good = httpx.post(
            f"{gateway.v1}/files",
            files={"file": ("ok.jsonl", raw_json(chat_line("ok")) + b"\n")},
            data={"purpose": "batch"},
            timeout=30,
        )
        assert good.status_code == 200, good.text
        body = {"input_file_id": good.json()["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}  # fmt: skip
        for extra, param in (
            ({"priority": "high"}, "priority"),
            ({"metadata": {"run": 1}}, "metadata.run"),
            ({"metadata": {"run": "a\u0000"}}, "metadata.run"),
            ({"input_file_id": "file-\ud800"}, "input_file_id"),
            ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ):
            answer = httpx.post(
                f"{gateway.v1}/batches", content=raw_json({**body, **extra}), headers=JSON,
                timeout=30,
            )  # fmt: skip
            error = error_of(answer, 400)
            assert error["param"] == param, (extra, error)
            assert error["type"] == "invalid_request_error"

        # A file kept from before a check was added: the batch is refused naming the line,
        # never created without it, nor a 503 "database unavailable" (as it once was).
        stored = tmp_path / "herd-home" / "files" / f"{good.json()['id']}.jsonl"
        kept = stored.read_bytes()
        stored.write_bytes(kept + raw_json(chat_line("late", "x\u0000")) + b"\n")
        answer = httpx.post(f"{gateway.v1}/batches", json=body, timeout=30)
        error = error_of(answer, 400)
        assert error["param"] == "input_file_id"
        assert "line 2: body.messages.[0].content: contains a NUL" in error["message"]
        stored.write_bytes(kept)
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM batches")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM files")).scalar_one() == 1
    # Only the good file is on disk.
    assert [p.name for p in (tmp_path / "herd-home" / "files").iterdir()] == [
        f"{good.json()['id']}.jsonl"
    ]


def test_database_errors_are_answered_by_their_real_cause(database: Database) -> None:
    def failure(sql: str, params: dict[str, Any], engine: Any = database.engine) -> Exception:
        try:
            with engine.begin() as conn:
                conn.execute(text(sql), params)
        except (SQLAlchemyError, UnicodeEncodeError) as exc:
            return exc
        raise AssertionError(f"{sql} did not fail")

    def answer(exc: Exception) -> tuple[int, str | None]:
        error = database_error(exc, retry_after_s=2)
        return error.status, error.code

    # Values the database cannot store: the client's fault, a 400 (never "unreachable").
    assert answer(failure("SELECT CAST(:v AS integer)", {"v": 3_000_000_000})) == (
        400, "invalid_value",
    )  # fmt: skip
    assert answer(failure("SELECT CAST(:v AS text)", {"v": "a\x00b"})) == (400, "invalid_value")
    assert answer(failure("SELECT CAST(:v AS jsonb)", {"v": '{"a": "\\u0000"}'})) == (
        400, "invalid_value",
    )  # fmt: skip
    # A name already taken: 409.
    insert = "INSERT INTO operators (name, password_hash, role) VALUES ('x', 'h', 'viewer')"
    with database.engine.begin() as conn:
        conn.execute(text(insert))
    assert answer(failure(insert, {})) == (409, "conflict")
    # A broken statement is the server's fault: 500, with an error id.
    error = database_error(failure("SELECT FROM nowhere_at_all", {}), 2)
    assert (error.status, error.code) == (500, "database_error") and "error id" in error.message
    # Only a server that cannot be reached is 503 database_unavailable, with Retry-After.
    away = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    error = database_error(failure("SELECT 1", {}, away), 2)
    assert (error.status, error.code) == (503, "database_unavailable")
    assert error.headers["Retry-After"] == "2"
    away.dispose()


# -- the admin API --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin_api(
    pg_server: PgServer, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """The admin API of a gateway on a database of its own, with the tiny model in the
    store, for the tests below (which leave no deployment behind)."""
    name = pg_server.create_database(template=migrated_template)
    home = tmp_path_factory.mktemp("admin-api")
    url = with_database(pg_server.url, name)
    database = Database(url)
    gateway = None
    try:
        settings = Settings(home=home / "herd-home", database_url=url, models_dir=home / "models")
        admin = Admin(database.engine, settings)
        admin.add_model(SETUP, write_tiny_gguf(home / "tiny.gguf"))
        boss = admin.create_key(SETUP, "boss", KeyPolicy(admin=True))
        gateway = GatewayThread(gateway_settings(home, url), url)
        with httpx.Client(
            base_url=f"{gateway.url}/admin/v1",
            headers={"Authorization": f"Bearer {boss.key}", **JSON},
            timeout=30,
        ) as client:
            yield client
    finally:
        if gateway is not None:
            gateway.stop()
        database.close()
        pg_server.drop_database(name)


DEPLOY = {"alias": "a", "model": "tiny.gguf", "n_ctx": 256}


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/deployments", {**DEPLOY, "replicas": 3_000_000_000}, "replicas"),
        ("POST", "/deployments", {**DEPLOY, "replicas": 1001}, "replicas"),
        ("POST", "/deployments", {**DEPLOY, "n_ctx": 2**40}, "n_ctx"),
        ("POST", "/deployments", {**DEPLOY, "parallel": 100_000}, "parallel"),
        ("POST", "/deployments", {**DEPLOY, "n_gpu_layers": -2}, "n_gpu_layers"),
        ("POST", "/deployments", {**DEPLOY, "threads": 2**31}, "threads"),
        ("POST", "/deployments", {**DEPLOY, "weight": 2**31}, "weight"),
        ("POST", "/deployments", {**DEPLOY, "alias": "a\u0000"}, "alias"),
        ("POST", "/deployments", {**DEPLOY, "model": "tiny\ud800.gguf"}, "model"),
        ("POST", "/deployments", {**DEPLOY, "node": "n\u0000"}, "node"),
        ("POST", "/deployments", {**DEPLOY, "stopped": "yes"}, "stopped"),
        ("POST", "/deployments", {**DEPLOY, "tensor_split": [1.0] * 200}, "tensor_split"),
        ("POST", "/deployments/1/scale", {"replicas": 3_000_000_000}, "replicas"),
        ("POST", f"/deployments/{2**63}/scale", {"replicas": 1}, "deployment_id"),
        ("POST", "/keys", {"name": "k", "admin": "yes"}, "admin"),
        ("POST", "/keys", {"name": "k", "rate_limit_tpm": 2**31}, "rate_limit_tpm"),
        ("POST", "/keys", {"name": "k", "daily_token_quota": 2**60}, "daily_token_quota"),
        ("POST", "/keys", {"name": "k\ud800"}, "name"),
        ("POST", "/keys", {"name": "k", "scopes": ["a\u0000"]}, "scopes.[0]"),
        ("POST", "/users", {"name": "u\u0000", "password": "long enough"}, "name"),
        ("POST", "/users", {"name": "u", "password": "x" * 2000}, "password"),
        ("PUT", "/aliases/a/settings", {"cache_ttl_s": 1e300}, "cache_ttl_s"),
        ("PUT", "/aliases/a/settings", {"rate_limit_rpm": 2**31}, "rate_limit_rpm"),
        ("PUT", "/aliases/a/weights", {"weights": {"1": 2**31}}, "weights.1"),
        ("PUT", "/aliases/a/weights", {"weights": {str(2**64): 1}}, "weights"),
        ("PUT", "/aliases/a%00/settings", {}, "alias"),
        ("DELETE", "/keys/k%00", None, "name_or_id"),
        ("DELETE", "/users/%00", None, "name"),
        ("GET", "/audit?actor=%00", None, "actor"),
        ("GET", "/metrics?alias=%00", None, "alias"),
    ],
)
def test_admin_api_values_out_of_bounds_or_unstorable_are_400s_naming_the_field(
    admin_api: httpx.Client, method: str, path: str, body: Any, param: str
) -> None:
    content = None if body is None else raw_json(body)
    error = error_of(admin_api.request(method, path, content=content), 400)
    assert error["param"] is not None and param in error["param"], error
    assert error["type"] == "invalid_request_error"
    assert admin_api.get("/deployments").json() == []


def test_admin_api_model_paths_it_cannot_use_are_400s(admin_api: httpx.Client) -> None:
    for path in ("~nobody-here/m.gguf", "a" * 300 + ".gguf", "/etc", "/dev/null"):
        error = error_of(admin_api.post("/models", json={"path": path}), 400)
        assert error["message"], error


def test_admin_api_bounds_are_inclusive(admin_api: httpx.Client) -> None:
    created = admin_api.post("/deployments", json={**DEPLOY, "replicas": 1000, "weight": 10**6})
    assert created.status_code == 201, created.text
    assert (created.json()["replicas"], created.json()["traffic_weight"]) == (1000, 10**6)
    assert admin_api.delete(f"/deployments/{created.json()['id']}").status_code == 200


# -- herd.yaml and herd apply -------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # YAML 1.2 core: yes/on/y are strings, so a boolean field refuses them.
        ("keys:\n  - name: k\n    admin: yes\n",
         "herd.yaml:3: keys.0.admin: Input should be a valid boolean"),
        ("deployments:\n  - alias: a\n    model: m\n    stopped: on\n",
         "herd.yaml:4: deployments.0.stopped: Input should be a valid boolean"),
        ("deployments:\n  - alias: a\n    model: m\n    replicas: 3000000000\n",
         "herd.yaml:4: deployments.0.replicas: Input should be less than or equal to 1000"),
        ("deployments:\n  - alias: a\n    model: m\n    n_ctx: 99999999999\n",
         "herd.yaml:4: deployments.0.n_ctx: Input should be less than or equal to"),
        ("keys:\n  - name: k\n    rate_limit_rpm: 2147483648\n",
         "herd.yaml:3: keys.0.rate_limit_rpm"),
        ("aliases:\n  a:\n    cache_ttl_s: .inf\n",
         "herd.yaml:3: aliases.a.cache_ttl_s: Input should be a finite number"),
        ('deployments:\n  - alias: "a\\0b"\n    model: m\n',
         "herd.yaml:2: deployments.0.alias: contains a NUL character at offset 1"),
        ('keys:\n  - name: k\n    scopes: ["\\ud800"]\n',
         "herd.yaml:3: keys.0.scopes.0: contains a lone UTF-16 surrogate (U+D800)"),
        ("a: \x00\n", "herd.yaml:1: not valid YAML: the character '\\x00'"),
        # Merge keys: an error names its own line, and a merged value keeps the line it is
        # written on.
        ("deployments:\n  - alias: a\n    model: m\n    <<: 5\n", "herd.yaml:4: << merges a"),
        ("deployments:\n  - alias: a\n    model: m\n    <<: *nope\n",
         "herd.yaml:4: not valid YAML: found undefined alias"),
        ("deployments:\n  - &base\n    alias: a\n    model: m\n    replicas: 2\n"
         "  - <<: *base\n    alias: b\n    replicas: -1\n",
         "herd.yaml:8: deployments.1.replicas: Input should be greater than or equal to 0"),
        ("deployments:\n  - &base\n    alias: a\n    model: m\n    weight: -5\n"
         "  - <<: *base\n    alias: b\n",
         "herd.yaml:5: deployments.1.weight"),
        ("deployments:\n  - alias: a\n    model: m\n  - {alias: b, model: m, alias: c}\n",
         "herd.yaml:4: 'alias' appears twice"),
    ],
)  # fmt: skip
def test_herd_yaml_errors_name_their_line(source: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(source)
    assert expected in str(caught.value), str(caught.value)


def test_herd_yaml_reads_yaml_1_2_values() -> None:
    loaded = parse_config(
        "deployments:\n  - alias: a\n    model: m\n    n_ctx: 010\n    replicas: 0x2\n"
        "    stopped: False\n    node: yes\nkeys:\n  - name: 2024-01-01\n"
    )
    deployment = loaded.config.deployments[0]
    assert (deployment.n_ctx, deployment.replicas, deployment.stopped) == (10, 2, False)
    assert deployment.node == "yes"
    assert loaded.config.keys[0].name == "2024-01-01"  # a date is text, as written


def test_alias_bombs_deep_nesting_and_bad_bytes_fail_at_once_in_one_line() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        name, previous = chr(ord("a") + i), chr(ord("a") + i - 1)
        levels.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    bomb = "\n".join(levels) + "\ndeployments: *j\n"
    nested = "deployments: " + "[" * 3000 + "]" * 3000 + "\n"
    recursive = "deployments: &r [*r]\n"
    for source, expected in (
        (bomb, "expands to more than"),
        (nested, "herd.yaml:1: nested deeper than 64 levels"),
        (recursive, "herd.yaml:1: nested deeper than 64 levels"),
    ):
        started = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            parse_config(source)
        assert time.monotonic() - started < 1.0
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config(b"keys:\n  - name: ok\n  - name: caf\xe9\n")
    assert str(caught.value) == (
        "herd.yaml:3: not UTF-8 text: byte 32 (0xe9) invalid continuation byte"
    )


def apply_file(env: dict[str, str], path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return run_herd("apply", "-f", str(path), "--as", "t", *flags, env=env, timeout_s=60)


def test_herd_apply_refuses_in_one_line_and_dry_run_checks_what_apply_checks(
    herd_env: dict[str, str], tmp_path: Path, database: Database, settings: Settings,
    tiny_gguf: Callable[..., Path],
) -> None:  # fmt: skip
    admin = Admin(database.engine, settings)
    admin.add_model(SETUP, tiny_gguf("tiny.gguf"))  # trained for 512 tokens
    path = tmp_path / "herd.yaml"

    def refused(source: str | bytes, *flags: str) -> str:
        if isinstance(source, bytes):
            path.write_bytes(source)
        else:
            path.write_text(source)
        done = apply_file(herd_env, path, *flags)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and "INFO" not in done.stderr, done.stderr
        return done.stderr.strip()

    for flags in ((), ("--dry-run",)):
        out = refused(
            "deployments:\n  - alias: a\n    model: tiny.gguf\n    replicas: 3000000000\n", *flags
        )
        assert out.startswith("herd: herd.yaml:4: deployments.0.replicas:"), out
        assert len(out.splitlines()) == 1
        # n_ctx above the trained context: refused by the dry run as by the apply.
        out = refused(
            "deployments:\n  - alias: ok\n    model: tiny.gguf\n    n_ctx: 256\n"
            "  - alias: big\n    model: tiny.gguf\n    n_ctx: 4096\n",
            *flags,
        )
        assert "herd.yaml:5:" in out and "n_ctx 4096 is above the 512 tokens" in out, out
        assert "nothing was applied" in out
    assert refused(b"keys:\n  - name: \xff\n", "--dry-run") == (
        "herd: herd.yaml:2: not UTF-8 text: byte 16 (0xff) invalid start byte"
    )
    assert "admin" in refused("keys:\n  - name: k\n    admin: yes\n", "--dry-run")
    started = time.monotonic()
    out = refused("deployments: " + "[" * 3000 + "]" * 3000 + "\n", "--dry-run")
    assert out == "herd: herd.yaml:1: nested deeper than 64 levels"
    assert time.monotonic() - started < 30

    # A good file: the dry run makes every change in a transaction it rolls back.
    path.write_text(
        "deployments:\n  - alias: ok\n    model: tiny.gguf\n    n_ctx: 256\n"
        "aliases:\n  ok:\n    cache_ttl_s: 30\nkeys:\n  - name: ci\n"
    )
    done = apply_file(herd_env, path, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "dry run: 3 change(s) checked, not applied" in done.stdout
    assert "new key" not in done.stdout and "INFO" not in done.stderr
    assert admin.deployments().all() == [] and admin.keys().list() == []
    assert admin.alias_settings() == {}
    assert read_audit(admin.engine, actor="t") == []
    done = apply_file(herd_env, path)
    assert done.returncode == 0, done.stderr
    assert [d.alias for d in admin.deployments().all()] == ["ok"]


def test_a_dry_run_refuses_what_only_the_database_sees(
    database: Database, settings: Settings, tiny_gguf: Callable[..., Path]
) -> None:
    admin = Admin(database.engine, settings)
    admin.add_model(SETUP, tiny_gguf("tiny.gguf"))
    applier = Applier(admin)
    # A deployment whose alias another deployment of the same file makes unusable is only
    # found by running the changes; the dry run runs them.
    loaded = parse_config(
        "deployments:\n  - alias: 'bad alias'\n    model: tiny.gguf\n    n_ctx: 128\n"
    )
    plan = applier.plan(loaded, prune=False)
    with pytest.raises(ConfigError, match=r"herd.yaml:2: alias 'bad alias' is not usable"):
        applier.apply(plan, Actor("t", Via.APPLY), dry_run=True)
    assert admin.deployments().all() == []
    assert read_audit(admin.engine, actor="t") == []


# -- uploads, prompt sets, accounts -------------------------------------------------------


def test_dataset_uploads_and_prompt_sets_refuse_unstorable_text_naming_the_line(
    tmp_path: Path,
) -> None:
    jsonl = b'{"prompt": "fine", "response": "ok"}\n{"prompt": "a\\u0000", "response": "b"}\n'
    with pytest.raises(DatasetError, match=r"line 2: prompt: contains a NUL character"):
        read_upload("rows.jsonl", jsonl)
    csv = b"prompt,response\nhi,there\nbye,now\x00\n"
    with pytest.raises(DatasetError, match=r"line 3: response: contains a NUL character"):
        read_upload("rows.csv", csv)
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    with pytest.raises(DatasetError, match=r"line 1: not valid JSON"):
        read_upload("deep.jsonl", deep)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "q", "reference": "a"}\n{"prompt": "q", "reference": "\\udfff"}\n'
    )
    with pytest.raises(PromptSetError, match=r"line 2: reference: contains a lone UTF-16"):
        read_prompt_file(prompts)


def test_user_names_and_passwords_the_database_cannot_store(database: Database) -> None:
    accounts = Accounts(database.engine)
    with pytest.raises(AccountError, match="printable"):
        accounts.add("bad\x00name", "long enough")
    with pytest.raises(AccountError, match="surrogate"):
        accounts.add("olivia", "long \ud800 enough")
    # A login with such a name or password fails like any wrong one, with no query refused.
    assert accounts.verify("bad\x00name", "whatever") is None
    assert accounts.verify("olivia", "pass\udc00word") is None
    with pytest.raises(AccountError, match="no operator"):
        accounts.get("\x00")


# -- herd db stop ---------------------------------------------------------------------------


def test_db_stop_refuses_while_another_herd_process_holds_the_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    pgdata = home / "pgdata"
    env = {**os.environ, "HERD_HOME": str(home)}
    env.pop("HERD_DATABASE_URL", None)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from app.db.embedded import EmbeddedPostgres; "
         f"EmbeddedPostgres(Path({str(pgdata)!r})).start(); print('ready', flush=True); "
         "sys.stdin.read()"],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        refused = run_herd("db", "stop", env=env)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"in use by pid {holder.pid}" in refused.stderr and "--force" in refused.stderr
        assert running_url(pgdata) is not None

        # A command that attaches and releases says nothing about it at INFO.
        upgraded = run_herd("db", "upgrade", env=env)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "released" not in upgraded.stderr and "INFO" not in upgraded.stderr

        forced = run_herd("db", "stop", "--force", env=env)
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.strip() == "stopped" and running_url(pgdata) is None
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
        if running_url(pgdata) is not None:
            stop_server(pgdata)
