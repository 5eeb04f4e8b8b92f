"""The platform files (Dockerfile, Kubernetes overlays, Grafana dashboard) against the real
Herd: what a renderer or a schema cannot see. Every herd command and flag the manifests run
exists in the real CLI, every HERD_* variable they set is a Settings field, KEDA's query runs
on a migrated database, the dashboard's metrics are ones a real gateway and worker serve, and
every pod runs non-root with limits."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text

from app.cli import build_parser
from app.config import Settings
from app.db import migrate
from app.db.database import Database
from app.store.demo import find_demo_model
from tests.gateway_harness import GatewayThread, gateway_settings
from tests.worker_process import WorkerLauncher

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "kubernetes" / "overlays").iterdir() if p.is_dir())
DASHBOARD_JSON = DEPLOY / "grafana" / "herd.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
POD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (.ci/run installs it)")
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "kubernetes" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in POD_KINDS:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def herd_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, container) for every container that runs the Herd image."""
    for where, spec in pod_specs(objects):
        for container in spec.get("initContainers", []) + spec["containers"]:
            if "herd" in container["image"].rpartition("/")[2].partition(":")[0]:
                yield f"{where} {container['name']}", container


def test_every_overlay_is_checked() -> None:
    assert {"cpu", "gpu", "cpu-hpa"} <= set(OVERLAYS)


def command_path(args: list[str]) -> list[str]:
    """The subcommand words of a herd command line: everything before the first flag."""
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words


def herd_help(words: tuple[str, ...], cache: dict[tuple[str, ...], str]) -> str:
    if words not in cache:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *words, "--help"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert done.returncode == 0, f"`herd {' '.join(words)} --help` failed: {done.stderr}"
        cache[words] = done.stdout
    return cache[words]


def lists_command(help_text: str, command: str) -> bool:
    """Whether argparse's help lists command among its subcommands (an indented first word)."""
    return re.search(rf"^\s+{re.escape(command)}\s", help_text, re.M) is not None


def test_manifest_commands_exist_in_the_real_cli(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    helps: dict[tuple[str, ...], str] = {}
    seen = set()
    for overlay, objects in rendered.items():
        for where, container in herd_containers(objects):
            args = container.get("args", [])
            words = command_path(args)
            assert words, f"{overlay}: {where} runs the image's default (--help)"
            # The command word is listed by `herd --help` (or its group's help).
            assert lists_command(herd_help(tuple(words[:-1]), helps), words[-1]), (
                f"{overlay}: {where}: `herd {' '.join(words)}` is not a herd command"
            )
            own = herd_help(tuple(words), helps)
            for flag in (a.split("=")[0] for a in args if a.startswith("--")):
                listed = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", own)
                assert listed, f"{overlay}: {where}: `herd {' '.join(words)}` has no {flag}"
            # And the whole line parses: types, required flags, choices.
            try:
                build_parser().parse_args(args)
            except SystemExit:
                pytest.fail(f"{overlay}: {where}: `herd {' '.join(args)}` does not parse")
            seen.add(" ".join(words))
    assert {"gateway", "dashboard", "worker", "db upgrade"} <= seen


def test_dockerfile_runs_herd_and_its_examples_are_commands() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["herd"]' in dockerfile
    assert 'herd = "app.cli:main"' in (REPO / "pyproject.toml").read_text()
    top = herd_help((), {})
    examples = re.findall(r"docker run herd(?::\w+)? ([a-z-]+)", dockerfile)
    assert examples, "the Dockerfile's header shows how to run each role"
    for command in examples:
        assert lists_command(top, command), f"`herd {command}` in the Dockerfile"
    # The image's defaults agree with Herd's: the health check hits the gateway's port, and
    # the ports it exposes are the gateway's and the dashboard's.
    defaults = Settings(database_url="postgresql://unused@localhost/x")
    health = re.search(r"HEALTHCHECK_URL=http://127\.0\.0\.1:(\d+)/health", dockerfile)
    assert health and int(health.group(1)) == defaults.gateway_port
    exposed = re.search(r"^EXPOSE (.+)$", dockerfile, re.M)
    assert exposed is not None
    ports = {int(p) for p in exposed.group(1).split()}
    assert {defaults.gateway_port, defaults.dashboard_port} <= ports


def deploy_texts() -> Iterator[tuple[Path, str]]:
    yield REPO / "Dockerfile", (REPO / "Dockerfile").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix in (".yaml", ".yml", ".sh", ".json"):
            yield path, path.read_text()


def test_every_herd_variable_named_is_a_setting() -> None:
    known = {f"HERD_{name.upper()}" for name in Settings.model_fields}
    used: dict[str, Path] = {}
    for path, content in deploy_texts():
        for name in re.findall(r"\bHERD_[A-Z0-9_]+\b", content):
            used.setdefault(name, path)
    assert "HERD_DATABASE_URL" in used
    unknown = {
        name: str(path.relative_to(REPO)) for name, path in used.items() if name not in known
    }
    assert not unknown, f"not Settings fields (see app/config.py): {unknown}"


def test_pods_run_non_root_with_limits_and_probes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, objects in rendered.items():
        for where, spec in pod_specs(objects):
            pod = spec.get("securityContext", {})
            assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) != 0, where
            for container in spec.get("initContainers", []) + spec["containers"]:
                name = f"{overlay}: {where} {container['name']}"
                security = container.get("securityContext", {})
                assert security.get("allowPrivilegeEscalation") is False, name
                assert security.get("capabilities", {}).get("drop") == ["ALL"], name
                assert security.get("readOnlyRootFilesystem") is True, name
                resources = container.get("resources", {})
                assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
                assert {"cpu", "memory"} <= set(resources.get("limits", {})), name
                if where.startswith("Deployment/"):
                    assert "readinessProbe" in container and "livenessProbe" in container, name
                # Read-only root: everything Herd writes lives under HERD_HOME, mounted writable.
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/home/herd/.herd" in mounts, name


def test_gpu_overlay_offloads_to_one_gpu_per_worker(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, objects in rendered.items():
        for where, container in herd_containers(objects):
            if container["args"][0] != "worker":
                continue
            gpus = container["resources"]["limits"].get("nvidia.com/gpu")
            args = container["args"]
            if overlay == "gpu":
                assert gpus == "1", where
                assert args[args.index("--n-gpu-layers") + 1] == "-1", where
            else:
                assert gpus is None and "--n-gpu-layers" not in args, f"{overlay}: {where}"


def test_keda_query_runs_on_a_migrated_database(
    rendered: dict[str, list[dict[str, Any]]], database: Database
) -> None:
    triggers = [
        trigger
        for objects in rendered.values()
        for obj in objects
        if obj["kind"] == "ScaledObject"
        for trigger in obj["spec"]["triggers"]
    ]
    assert triggers, "no KEDA ScaledObject rendered"
    env_names = {
        e["name"]
        for objects in rendered.values()
        for _where, c in herd_containers(objects)
        for e in c.get("env", [])
    }
    for trigger in triggers:
        assert trigger["type"] == "postgresql"
        assert trigger["metadata"]["connectionFromEnv"] in env_names
        with database.engine.connect() as conn:
            value = conn.execute(text(trigger["metadata"]["query"])).scalar_one()
        # Nothing waits at a gateway for this alias in a fresh database.
        assert value == 0


def metric_families(exposition: str) -> dict[str, str]:
    """name -> type, from the # TYPE lines (present even before the first sample)."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M))


@pytest.fixture
def served_metrics(
    tmp_path: Path,
    db_url: str,
    worker_launcher: WorkerLauncher,
) -> dict[str, str]:
    """Metric families of a real gateway and a real worker (llama.cpp on the demo model)."""
    worker = worker_launcher.start("--model", str(find_demo_model().path), "--alias", "smol")
    worker_url = worker.wait_ready()
    gateway = GatewayThread(gateway_settings(tmp_path, db_url), db_url)
    try:
        gateway_text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    finally:
        gateway.stop()
    worker_text = httpx.get(f"{worker_url}/metrics", timeout=10).text
    families = {**metric_families(gateway_text), **metric_families(worker_text)}
    assert any(n.startswith("herd_gateway_") for n in families)
    assert any(n.startswith("herd_worker_") for n in families)
    return families


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_grafana_dashboard_uses_served_metrics(served_metrics: dict[str, str]) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 10
    used = set()
    for expr in expressions:
        for name in re.findall(r"\b(herd_[a-z0-9_]+)\b", expr):
            base = name
            if name not in served_metrics and name.endswith(HISTOGRAM_SUFFIXES):
                base = name.rsplit("_", 1)[0]
                assert served_metrics.get(base) == "histogram", f"{name} in {expr!r}"
            assert base in served_metrics, f"{name} is served by neither gateway nor worker"
            used.add(base)
        # Quantiles come from histogram buckets; rates are of counters or buckets, not gauges.
        for name in re.findall(r"histogram_quantile\([^,]+, sum by \([^)]*\) \(rate\((\w+)", expr):
            assert name.endswith("_bucket"), expr
        for name in re.findall(r"\brate\((\w+)", expr):
            kind = served_metrics.get(name) or served_metrics.get(name.rsplit("_", 1)[0])
            assert kind in ("counter", "histogram"), f"rate() of a {kind}: {expr!r}"
    # The list: latency histograms, tokens/s, queue depth, slots busy, errors, cache.
    for needed in (
        "herd_gateway_ttft_seconds",
        "herd_gateway_request_duration_seconds",
        "herd_worker_completion_tokens_total",
        "herd_gateway_outstanding_requests",
        "herd_worker_queue_length",
        "herd_worker_slots_busy",
        "herd_gateway_upstream_errors_total",
        "herd_gateway_cache_hits_total",
    ):
        assert needed in used, f"the dashboard does not show {needed}"


def test_concurrent_schema_upgrades_take_turns(empty_db_url: str, tmp_path: Path) -> None:
    """Gateway replicas, the dashboard and the migration Job all upgrade the schema when they
    start; on a new database they must not trip over each other."""
    env = {**os.environ, "HERD_DATABASE_URL": empty_db_url, "HERD_HOME": str(tmp_path / "home")}
    upgrades = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in upgrades]
    for process, output in zip(upgrades, outputs, strict=True):
        assert process.returncode == 0, output[-2000:]
    database = Database(empty_db_url)
    try:
        assert migrate.current_revision(database.engine) == migrate.head_revision()
    finally:
        database.close()


def test_grafana_counts_live_traffic_unless_asked() -> None:
    # As the dashboard's tiles: every gateway call series is filtered by the traffic class
    # variable (live by default), and "server errors" are the catalog's outcome.
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "traffic_class")
    assert variable["current"]["value"] == ["live"]
    for expr in dashboard_expressions():
        for selector in re.findall(r"herd_gateway_(?:requests_total|ttft_seconds_bucket|"
                                   r"request_duration_seconds_bucket|tokens_per_second_bucket)"
                                   r"\{([^}]*)\}", expr):  # fmt: skip
            assert 'traffic_class=~"$traffic_class"' in selector, expr
        assert "status!~" not in expr, expr
