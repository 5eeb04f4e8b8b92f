"""Placement on several nodes, joined (external) deployments, the gateways' demand counts and
the scale-from-zero hold: real PostgreSQL, real gateway, real worker processes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from app.config import Settings
from app.control.deployments import Deployments, UnknownDeploymentError
from app.db.database import Database
from app.gateway.demand import alias_demand, queued_requests
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from app.supervisor.placement import (
    NodeInfo,
    Placer,
    Selector,
    plan_placements,
)
from app.supervisor.records import SupervisorRecords
from app.worker.advertise import advertised_url
from tests.conftest import run_herd, write_tiny_gguf
from tests.gateway_harness import (
    GatewayThread,
    Stubs,
    add_deployment,
    add_model,
    gateway_settings,
    wait_for,
)
from tests.worker_process import WorkerLauncher

TIMEOUT_S = 3.0


def placed(engine: Engine, deployment_id: int) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT replica, node FROM placements WHERE deployment_id = :d"),
            {"d": deployment_id},
        ).all()
    return {int(r.replica): str(r.node) for r in rows}


def set_replicas(engine: Engine, deployment_id: int, replicas: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE deployments SET replicas = :r WHERE id = :d"),
            {"r": replicas, "d": deployment_id},
        )


def silence(engine: Engine, node: str) -> None:
    """The node's supervisor stopped heartbeating a while ago."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE nodes SET heartbeat_at = now() - interval '1 minute' WHERE name = :n"),
            {"n": node},
        )


# -- the pure planner ------------------------------------------------------------------------


def test_plan_follows_names_and_labels_and_spreads_replicas() -> None:
    nodes = [
        NodeInfo("a", {"gpu": "h100"}),
        NodeInfo("b", {"gpu": "a10", "zone": "x"}),
        NodeInfo("c", {}),
    ]
    plan = plan_placements(
        [
            Selector(1, 2, None, {"gpu": "h100"}),
            Selector(2, 3, None, None),
            Selector(3, 1, "b", None),
            Selector(4, 1, None, {"gpu": "tpu"}),  # no node matches: stays unplaced
            Selector(5, 1, None, None, active=False),  # failed: gets nothing new
        ],
        nodes,
        {},
    )
    assert not plan.remove
    by_deployment: dict[int, list[str]] = {}
    for deployment_id, _, node in plan.add:
        by_deployment.setdefault(deployment_id, []).append(node)
    assert by_deployment[1] == ["a", "a"]
    assert sorted(by_deployment[2]) == ["a", "b", "c"]  # one per node before doubling up
    assert by_deployment[3] == ["b"]
    assert 4 not in by_deployment and 5 not in by_deployment


def test_plan_drops_placements_on_dead_unmatched_or_surplus_replicas() -> None:
    nodes = [NodeInfo("a", {"gpu": "h100"}), NodeInfo("b", {})]
    plan = plan_placements(
        [Selector(1, 2, None, {"gpu": "h100"}), Selector(2, 1, None, None)],
        nodes,
        {
            (1, 0): "a",  # fine
            (1, 1): "b",  # b lacks the label: moves to a
            (2, 0): "gone",  # dead node: re-placed
            (2, 1): "a",  # beyond the replica count: dropped
            (3, 0): "a",  # deployment no longer supervised: dropped
        },
    )
    assert plan.remove == [(1, 1), (2, 0), (2, 1), (3, 0)]
    assert (1, 1, "a") in plan.add
    assert any(d == 2 and r == 0 for d, r, _ in plan.add)
    assert len(plan.add) == 2


# -- placement in PostgreSQL -----------------------------------------------------------------


def test_single_node_runs_every_replica_as_before(database: Database) -> None:
    engine = database.engine
    model_id = add_model(engine, "m.gguf")
    deployment_id = add_deployment(engine, "m", model_id)
    set_replicas(engine, deployment_id, 3)
    placer = Placer(engine, "only", {})
    placer.heartbeat()
    placer.place(TIMEOUT_S)
    assert placed(engine, deployment_id) == {0: "only", 1: "only", 2: "only"}
    assert SupervisorRecords(engine, "only").desired()[deployment_id].replicas == 3
    # Scaling down gives the highest replicas up first.
    set_replicas(engine, deployment_id, 1)
    placer.place(TIMEOUT_S)
    assert placed(engine, deployment_id) == {0: "only"}


def test_two_supervisors_never_place_a_replica_twice(database: Database) -> None:
    engine = database.engine
    model_id = add_model(engine, "m.gguf")
    deployments = [add_deployment(engine, f"m{i}", model_id) for i in range(4)]
    placers = [Placer(engine, name, {}) for name in ("node-a", "node-b")]
    for placer in placers:
        placer.heartbeat()
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn(placer: Placer) -> None:
        # Both place at once, over and over, while replica counts change under them.
        try:
            while not stop.is_set():
                placer.heartbeat()
                placer.place(TIMEOUT_S)
        except BaseException as exc:  # collected: a failure in a thread must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(p,)) for p in placers]
    for thread in threads:
        thread.start()
    try:
        for replicas in (3, 5, 2, 4):
            for deployment_id in deployments:
                set_replicas(engine, deployment_id, replicas)
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors
    placers[0].place(TIMEOUT_S)
    for deployment_id in deployments:
        where = placed(engine, deployment_id)
        assert sorted(where) == [0, 1, 2, 3]
        assert Counter(where.values()) == {"node-a": 2, "node-b": 2}
    # What each supervisor runs adds up to the replica count, never more.
    a = SupervisorRecords(engine, "node-a").desired()
    b = SupervisorRecords(engine, "node-b").desired()
    assert all(a[d].replicas + b[d].replicas == 4 for d in deployments)


def test_replicas_of_a_silent_node_move_to_a_live_one(database: Database) -> None:
    engine = database.engine
    model_id = add_model(engine, "m.gguf")
    deployment_id = add_deployment(engine, "m", model_id)
    set_replicas(engine, deployment_id, 2)
    a, b = Placer(engine, "a", {}), Placer(engine, "b", {})
    a.heartbeat()
    b.heartbeat()
    a.place(TIMEOUT_S)
    assert Counter(placed(engine, deployment_id).values()) == {"a": 1, "b": 1}
    silence(engine, "b")
    a.heartbeat()
    plan = a.place(TIMEOUT_S)
    assert plan.remove and plan.add
    assert placed(engine, deployment_id) == {0: "a", 1: "a"}
    assert SupervisorRecords(engine, "b").desired()[deployment_id].replicas == 0
    # b comes back: nothing moves back (no churn), and b runs nothing of it.
    b.heartbeat()
    assert not b.place(TIMEOUT_S)


def test_selectors_place_by_label_and_name_and_move_when_changed(database: Database) -> None:
    engine = database.engine
    model_id = add_model(engine, "m.gguf")
    deployment_id = add_deployment(engine, "m", model_id)
    set_replicas(engine, deployment_id, 2)
    gpu = Placer(engine, "gpu-box", Settings(node_labels="gpu=h100,zone=a").node_label_map)
    cpu = Placer(engine, "cpu-box", {"zone": "a"})
    for placer in (gpu, cpu):
        placer.heartbeat()
    Deployments(engine).set_node_selector(deployment_id, None, {"gpu": "h100"})
    cpu.place(TIMEOUT_S)
    assert placed(engine, deployment_id) == {0: "gpu-box", 1: "gpu-box"}
    Deployments(engine).set_node_selector(deployment_id, "cpu-box", None)
    gpu.place(TIMEOUT_S)
    assert placed(engine, deployment_id) == {0: "cpu-box", 1: "cpu-box"}
    # Nothing matches both:
    Deployments(engine).set_node_selector(deployment_id, "cpu-box", {"gpu": "h100"})
    gpu.place(TIMEOUT_S)
    assert placed(engine, deployment_id) == {}
    with pytest.raises(UnknownDeploymentError, match="no deployment"):
        Deployments(engine).set_node_selector(999_999, None, None)


def test_a_clean_exit_hands_replicas_over_at_once(database: Database) -> None:
    engine = database.engine
    model_id = add_model(engine, "m.gguf")
    deployment_id = add_deployment(engine, "m", model_id)
    a, b = Placer(engine, "a", {}), Placer(engine, "b", {})
    a.heartbeat()
    a.place(TIMEOUT_S)
    b.heartbeat()
    assert placed(engine, deployment_id) == {0: "a"}
    a.leave()
    b.place(TIMEOUT_S)
    assert placed(engine, deployment_id) == {0: "b"}


# -- external deployments: `herd worker --join` ----------------------------------------------


def test_join_creates_one_external_deployment_even_when_racing(database: Database) -> None:
    engine = database.engine
    model_id = add_model(engine, "m.gguf")
    with ThreadPoolExecutor(6) as pool:
        deployments = Deployments(engine)
        joined = list(pool.map(lambda _: deployments.join_external("ext", model_id), range(6)))
    ids = {deployment_id for deployment_id, _ in joined}
    assert len(ids) == 1 and sum(created for _, created in joined) == 1
    (deployment_id,) = ids
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT external, replicas FROM deployments WHERE id = :d"), {"d": deployment_id}
        ).one()
    assert (row.external, row.replicas) == (True, 0)
    # No supervisor places or runs it.
    placer = Placer(engine, "n", {})
    placer.heartbeat()
    placer.place(TIMEOUT_S)
    assert placed(engine, deployment_id) == {}
    assert deployment_id not in SupervisorRecords(engine, "n").desired()
    # A supervised deployment of the same alias and model is joined, not duplicated.
    supervised = add_deployment(engine, "sup", model_id)
    assert Deployments(engine).join_external("sup", model_id) == (supervised, False)


def test_worker_join_serves_through_the_gateway(
    database: Database,
    db_url: str,
    models_dir: Path,
    tmp_path: Path,
    worker_launcher: WorkerLauncher,
) -> None:
    demo = add_demo_model(ModelStore(database.engine, models_dir))
    worker = worker_launcher.start(
        "--model", demo.name, "--alias", "joined", "--join",
        "--advertise-url", "http://127.0.0.1",
    )  # fmt: skip
    url = worker.wait_ready()
    row = worker.wait_row()
    port = int(url.rsplit(":", 1)[1])
    assert url == advertised_url("127.0.0.1", port, "http://127.0.0.1")
    with database.engine.connect() as conn:
        external = conn.execute(
            text("SELECT external FROM deployments WHERE id = :d"), {"d": row["deployment_id"]}
        ).scalar_one()
    assert external is True
    gateway = GatewayThread(gateway_settings(tmp_path, db_url), db_url)
    try:
        gateway.wait_workers(1)
        answer = httpx.post(
            f"{gateway.v1}/completions",
            json={"model": "joined", "prompt": "hi", "max_tokens": 2},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    finally:
        gateway.stop()
    # A model outside the store cannot join: hosts would not agree on what it is.
    outside = worker_launcher.start(
        "--model", str(write_tiny_gguf(tmp_path / "elsewhere.gguf")), "--join"
    )
    assert outside.wait_exit() == 1
    assert "--join needs a model from the store" in outside.log()


# -- demand for autoscalers, and the scale-from-zero hold -----------------------------------


def test_queued_requests_sums_fresh_gateway_rows_only(database: Database) -> None:
    engine = database.engine
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO gateway_demand (gateway, alias, waiting, in_flight, updated_at) "
                "VALUES ('g1', 'a', 3, 5, now()), ('g2', 'a', 4, 4, now()), "
                "('dead', 'a', 100, 100, now() - interval '1 minute'), ('g1', 'b', 7, 7, now())"
            )
        )
    assert queued_requests(engine, "a") == 7
    assert queued_requests(engine, "b") == 7
    assert queued_requests(engine, "nobody") == 0
    assert alias_demand(engine, "a") == 9
    assert alias_demand(engine, "b") == 7
    assert alias_demand(engine, "nobody") == 0


def test_cold_start_holds_the_call_until_a_worker_is_ready(
    database: Database, db_url: str, tmp_path: Path
) -> None:
    engine = database.engine
    model_id = add_model(engine, "cold.gguf")
    deployment_id = add_deployment(engine, "cold", model_id)
    gateway = GatewayThread(gateway_settings(tmp_path, db_url, gateway_cold_start_s=30), db_url)
    stubs = Stubs(db_url)
    try:
        result: dict[str, httpx.Response] = {}
        call = threading.Thread(
            target=lambda: result.setdefault(
                "r",
                httpx.post(
                    f"{gateway.v1}/chat/completions",
                    json={"model": "cold", "messages": [{"role": "user", "content": "hi"}]},
                    timeout=60,
                ),
            )
        )
        call.start()
        # Held, and visible to an autoscaler through SQL while it waits.
        wait_for(lambda: queued_requests(engine, "cold") == 1, timeout_s=15)
        assert call.is_alive()
        stubs.start("cold", "late", deployment_id=deployment_id, model_id=model_id)
        call.join(timeout=30)
        assert result["r"].status_code == 200, result["r"].text
        wait_for(lambda: queued_requests(engine, "cold") == 0, timeout_s=15)
    finally:
        gateway.stop()
        stubs.stop_all()
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT status FROM requests WHERE alias = 'cold'")).all()
    assert [s.status for s in statuses] == ["ok"]


@pytest.mark.parametrize(("hold_s", "state"), [(0.0, "active"), (1.0, "active"), (30.0, "failed")])
def test_cold_start_gives_up_with_a_clear_503(
    database: Database, db_url: str, tmp_path: Path, hold_s: float, state: str
) -> None:
    engine = database.engine
    deployment_id = add_deployment(engine, "idle", add_model(engine, "idle.gguf"))
    with engine.begin() as conn:  # a failed deployment will not start: no point holding
        conn.execute(
            text("UPDATE deployments SET state = :s WHERE id = :id"),
            {"s": state, "id": deployment_id},
        )
    gateway = GatewayThread(gateway_settings(tmp_path, db_url, gateway_cold_start_s=hold_s), db_url)
    try:
        started = time.monotonic()
        answer = httpx.post(
            f"{gateway.v1}/chat/completions",
            json={"model": "idle", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        waited_s = time.monotonic() - started
    finally:
        gateway.stop()
    assert answer.status_code == 503
    message = answer.json()["error"]["message"]
    assert "'idle'" in message
    if state == "active" and hold_s:
        assert waited_s >= hold_s
        assert "within 1 s" in message
    else:
        assert waited_s < 1.0
        assert "no live worker" in message


def test_advertised_url_from_flag_or_bind_address() -> None:
    assert advertised_url("127.0.0.1", 8123) == "http://127.0.0.1:8123"
    assert advertised_url("::1", 8123) == "http://[::1]:8123"
    # Without a port the bound one is added; with one it is kept (a NAT or a Service).
    assert advertised_url("0.0.0.0", 8123, "http://gpu-1.lan") == "http://gpu-1.lan:8123"
    assert advertised_url("0.0.0.0", 8123, "https://w.example:443/") == "https://w.example:443"
    # A wildcard bind advertises the host's address on its default route, never loopback.
    wildcard = advertised_url("0.0.0.0", 8123)
    assert not wildcard.startswith("http://127.") and wildcard.endswith(":8123")
    for bad in ("gpu-1:80", "ftp://gpu-1", "http://gpu-1/v1", "http://gpu-1:port"):
        with pytest.raises(ValueError, match="--advertise-url"):
            advertised_url("0.0.0.0", 1, bad)


def test_cli_refuses_bad_labels_and_flags(herd_env: dict[str, str]) -> None:
    bad_labels = run_herd("supervisor", "--node-labels", "gpu", env=herd_env)
    assert bad_labels.returncode == 2 and "is not key=value" in bad_labels.stderr
    both = run_herd("worker", "--model", "m", "--join", "--deployment-id", "1", env=herd_env)
    assert both.returncode == 2 and "--join and --deployment-id exclude" in both.stderr
    bad_url = run_herd("worker", "--model", "m", "--advertise-url", "w:1", env=herd_env)
    assert bad_url.returncode == 2 and "is not http://host[:port]" in bad_url.stderr
