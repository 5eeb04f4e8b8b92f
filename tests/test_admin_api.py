"""The admin API on the gateway: admin-scoped keys only, the same audited changes as the
pages and the CLI, and described in the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.control.audit import Actor, Via, read_audit
from app.control.changes import Admin
from app.control.keys import KeyPolicy
from app.db.database import Database
from tests.gateway_harness import GatewayThread, gateway_settings

SETUP = Actor("setup", Via.CLI)


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Iterator[GatewayThread]:
    started = GatewayThread(gateway_settings(tmp_path, db_url), db_url)
    yield started
    started.stop()


@pytest.fixture
def admin(database: Database, settings: Settings, tiny_gguf: Callable[..., Path]) -> Admin:
    admin = Admin(database.engine, settings)
    admin.add_model(SETUP, tiny_gguf("tiny.gguf"))
    return admin


def test_admin_api_refuses_without_the_admin_scope(gateway: GatewayThread, admin: Admin) -> None:
    url = f"{gateway.url}/admin/v1/deployments"
    plain = admin.create_key(SETUP, "plain")
    boss = admin.create_key(SETUP, "boss", KeyPolicy(admin=True))
    gone = admin.create_key(SETUP, "gone", KeyPolicy(admin=True))
    admin.revoke_key(SETUP, "gone")
    old = admin.create_key(
        SETUP, "old", KeyPolicy(admin=True, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    )

    def status(key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(url, headers=headers, timeout=10).status_code

    assert status(None) == 401
    assert status("herd-not-a-key") == 401
    assert status(gone.key) == 401
    assert status(old.key) == 401
    assert status(plain.key) == 403
    assert status(boss.key) == 200
    body = httpx.get(url, headers={"Authorization": f"Bearer {plain.key}"}, timeout=10).json()
    assert "no admin scope" in body["error"]["message"]


def test_admin_api_changes_are_the_audited_changes(
    gateway: GatewayThread, admin: Admin, database: Database
) -> None:
    boss = admin.create_key(SETUP, "boss", KeyPolicy(admin=True))
    api = httpx.Client(
        base_url=f"{gateway.url}/admin/v1",
        headers={"Authorization": f"Bearer {boss.key}"},
        timeout=30,
    )
    created = api.post("/deployments", json={"alias": "chat", "model": "tiny.gguf", "n_ctx": 256})
    assert created.status_code == 201, created.text
    deployment_id = created.json()["id"]
    assert (
        api.post(f"/deployments/{deployment_id}/scale", json={"replicas": 2}).json()["replicas"]
        == 2
    )
    bad = api.post("/deployments", json={"alias": "x", "model": "missing.gguf"})
    assert bad.status_code == 400 and "missing.gguf" in bad.json()["error"]["message"]
    # Invalid bodies are 400 naming the field, as on /v1 (one OpenAI error surface).
    unknown = api.post("/deployments", json={"alias": "x", "model": "tiny.gguf", "replicaz": 1})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "replicaz"
    assert api.post("/deployments/999/stop").status_code == 404
    weights = api.put("/aliases/chat/weights", json={"weights": {str(deployment_id): 30}})
    assert weights.json() == {str(deployment_id): 30}
    assert api.put("/aliases/chat/settings", json={"cache_ttl_s": 30}).status_code == 200
    key = api.post("/keys", json={"name": "app", "scopes": ["chat"], "rate_limit_rpm": 5})
    assert key.status_code == 201 and key.json()["key"].startswith("herd-")
    assert [k["name"] for k in api.get("/keys").json()] == ["boss", "app"]
    user = api.post("/users", json={"name": "ann", "password": "long-enough", "role": "viewer"})
    assert user.status_code == 201
    assert api.patch("/users/ann", json={"disabled": True}).json()["disabled"] is True
    assert api.get("/models").json()[0]["name"] == "tiny.gguf"
    assert api.delete("/models/tiny.gguf").status_code == 400  # in use
    assert api.delete(f"/deployments/{deployment_id}").status_code == 200
    assert api.delete("/models/tiny.gguf").status_code == 200

    rows = read_audit(database.engine, actor="key:boss")
    assert {(r.via, r.source) for r in rows} == {("api", "127.0.0.1")}
    assert [r.action for r in reversed(rows)] == [
        "deployment.create", "deployment.scale", "routing.weights", "alias.settings",
        "key.create", "user.create", "user.disable", "deployment.delete", "model.delete",
    ]  # fmt: skip
    # The route each change came in by is its origin (the address stays the source).
    assert rows[-1].origin == "POST /admin/v1/deployments"
    assert rows[-2].origin == "POST /admin/v1/deployments/{deployment_id}/scale"
    audit = api.get("/audit", params={"action": "user."}).json()
    assert [r["action"] for r in audit] == ["user.disable", "user.create"]
    by_route = api.get("/audit", params={"via": "api", "origin": "PATCH /admin/v1/users/{name}"})
    assert [r["action"] for r in by_route.json()] == ["user.disable"]


def test_openapi_describes_the_admin_routes(gateway: GatewayThread) -> None:
    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()
    paths = schema["paths"]
    for path in ("/admin/v1/deployments", "/admin/v1/deployments/{deployment_id}/scale",
                 "/admin/v1/aliases/{alias}/weights", "/admin/v1/keys", "/admin/v1/users",
                 "/admin/v1/audit", "/v1/chat/completions"):  # fmt: skip
        assert path in paths, path
    assert "DeploymentSpec" in schema["components"]["schemas"]
