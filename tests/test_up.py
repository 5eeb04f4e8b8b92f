"""`herd up` as a new user runs it: embedded PostgreSQL, schema, store, dashboard, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import httpx
import psutil

from app.db.embedded import running_url
from tests.conftest import free_port

UP_TIMEOUT_S = 120


class HerdUp:
    """A `herd up` process whose output is read line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: Queue[str] = Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, marker: str, timeout_s: float = UP_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.output.append(line)
            if marker in line:
                return "".join(self.output)
        raise AssertionError(f"{marker!r} not seen; output:\n{''.join(self.output)}")

    def interrupt(self, timeout_s: float = 30) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout_s)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def postmasters(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in cmdline:
            found.append(proc)
    return found


def test_up_serves_dashboard_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HERD_DATABASE_URL"}
    env.update(
        HERD_HOME=str(home),
        HERD_MODELS_DIR=str(tmp_path / "models"),
        HERD_DASHBOARD_PORT=str(port),
        HERD_SUPERVISOR_PORT=str(free_port()),
        HERD_GATEWAY_PORT=str(free_port()),
    )
    pgdata = home / "pgdata"

    first = HerdUp(env, "--demo")
    try:
        output = first.wait_for("herd is up")
        assert "embedded PostgreSQL (started)" in output
        assert f"dashboard: http://127.0.0.1:{port}" in output
        assert "demo model: SmolLM2-135M-Instruct.Q4_1.gguf" in output
        password = re.search(r"'admin' with password (\S+)", output)
        assert password, output
        health = httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=5)
        assert health.status_code == 200 and health.text == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200

        # A second herd process attaches to the same server instead of starting another.
        assert len(postmasters(pgdata)) == 1
        server_pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        listed = subprocess.run(
            [sys.executable, "-m", "app.cli", "models", "list", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert "SmolLM2-135M-Instruct.Q4_1.gguf" in listed.stdout
        assert int((pgdata / "postmaster.pid").read_text().split()[0]) == server_pid
        assert running_url(pgdata) is not None  # still up: herd up holds it

        children = [
            child
            for child in psutil.Process(first.process.pid).children(recursive=True)
            if child.name() != "postgres"
        ]
        commands = [" ".join(child.cmdline()) for child in children]
        assert any("streamlit" in c for c in commands), commands
        assert any("app.cli supervisor" in c for c in commands), commands
        assert any("app.cli gateway" in c for c in commands), commands
        gateway = re.search(r"^gateway: +(http\S+)", output, re.MULTILINE)
        assert gateway, output
        models = httpx.get(f"{gateway.group(1)}/models", timeout=5)
        assert models.status_code == 200 and models.json()["object"] == "list"
        # --demo serves the demo at once: the README's curl answers without the browser.
        assert "deployed it as alias 'demo'" in output
        assert [m["id"] for m in models.json()["data"]] == ["demo"]
        reply = httpx.post(
            f"{gateway.group(1)}/chat/completions",
            json={
                "model": "demo",
                "messages": [{"role": "user", "content": "Say hello"}],
                "max_tokens": 8,
            },
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
        assert "HTTP Request:" not in output  # httpx's INFO lines stay out of herd's output

        assert first.interrupt() == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        first.kill()
    assert running_url(pgdata) is None
    assert not postmasters(pgdata)
    try:
        httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
        raise AssertionError("the dashboard still answers after Ctrl-C")
    except httpx.ConnectError:
        pass

    # A second `herd up` on the same HERD_HOME reuses the data: no new admin account.
    # It does not deploy the demo again: a deployment exists.
    second = HerdUp(env, "--demo")
    try:
        output = second.wait_for("herd is up")
        assert "password" not in output
        assert "1 valid" in output
        assert "deployed it as alias" not in output
        assert second.interrupt() == 0
    finally:
        second.kill()
    assert running_url(pgdata) is None


def test_up_reports_a_port_in_use(tmp_path: Path, db_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "HERD_DATABASE_URL": db_url,
            "HERD_HOME": str(tmp_path / "home"),
            "HERD_MODELS_DIR": str(tmp_path / "models"),
            "HERD_DASHBOARD_PORT": str(port),
            "HERD_SUPERVISOR_PORT": str(free_port()),
            "HERD_GATEWAY_PORT": str(free_port()),
        }
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S,
        )
    assert result.returncode == 1
    assert "dashboard exited" in result.stderr or "dashboard did not answer" in result.stderr
    assert "dashboard.log" in result.stderr
