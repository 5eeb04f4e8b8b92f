"""The admin API, /admin/v1 on the gateway's listener: the same Admin changes the pages and
the CLI make, for scripts and CI. Authenticated with admin-scoped API keys, looked up in the
database on every call (admin calls are rare; the /v1 routes never pass through here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from sqlalchemy import Engine, select

from app.analytics.catalog import UnknownMetric
from app.analytics.metrics_report import metrics_query, metrics_report
from app.analytics.scope import UnknownRange
from app.analytics.traffic import UnknownTrafficClass
from app.config import Settings
from app.control.accounts import AccountError
from app.control.aliases import AliasSettingError
from app.control.audit import Actor, Via, read_audit
from app.control.changes import Admin
from app.control.deployments import DeploymentError, UnknownDeploymentError
from app.control.keys import ApiKeyError, hash_key
from app.control.snapshots import alias_json, deployment_json, key_json, operator_json
from app.control.specs import (
    DEPLOYMENT_ID,
    AliasSpec,
    DeploymentSpec,
    KeyPolicySpec,
    KeySpec,
    ModelAddSpec,
    RollSpec,
    ScaleSpec,
    UserChangeSpec,
    UserCreateSpec,
    WeightsSpec,
)
from app.db.tables import ApiKey
from app.openai_api.text import Text
from app.store.catalog import ModelStoreError, describe_model

PREFIX = "/admin/v1"
REFUSALS = (DeploymentError, ApiKeyError, AccountError, ModelStoreError, AliasSettingError)

# Path and query parameters, bounded and storable like the bodies (app/control/specs.py): a
# NUL or an id past bigint is a 400 naming it, never a query PostgreSQL refuses.
DeploymentIdPath = Annotated[int, PathParam(ge=DEPLOYMENT_ID.low, le=DEPLOYMENT_ID.high)]
NamePath = Annotated[Text, PathParam(min_length=1, max_length=4096)]
QueryText = Annotated[Text | None, Query(max_length=4096)]


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def check_admin_key(
    engine: Engine, authorization: str | None, source: str | None, origin: str | None = None
) -> Actor:
    """The actor for an admin call (origin: its route): 401 without a valid key (unknown,
    revoked, expired), 403 for a valid key without the admin scope."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("the admin API needs `Authorization: Bearer <admin key>`")
    with engine.connect() as conn:
        row = conn.execute(
            select(
                ApiKey.name,
                ApiKey.admin,
                ApiKey.revoked_at,
                (ApiKey.expires_at <= datetime.now().astimezone()).label("expired"),
            ).where(ApiKey.key_hash == hash_key(token.strip()))
        ).first()
    if row is None or row.revoked_at is not None:
        raise _unauthorized("the API key is not valid (unknown or revoked)")
    if row.expired:
        raise _unauthorized("the API key has expired")
    if not row.admin:
        raise HTTPException(403, f"key {row.name!r} has no admin scope")
    return Actor(who=f"key:{row.name}", via=Via.API, source=source, origin=origin)


def engine_of(request: Request) -> Engine:
    """The database engine of the app serving this call (the gateway runtime's)."""
    engine: Engine = request.app.state.runtime.engine
    return engine


def admin_of(request: Request) -> Admin:
    settings: Settings = request.app.state.runtime.settings
    return Admin(engine_of(request), settings)


def route_of(request: Request) -> str:
    """The call's route as the audit log names it: "PUT /admin/v1/aliases/{alias}"."""
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    return f"{request.method} {path}"


def actor_of(request: Request) -> Actor:
    source = request.client.host if request.client else None
    authorization = request.headers.get("authorization")
    return check_admin_key(engine_of(request), authorization, source, route_of(request))


Who = Annotated[Actor, Depends(actor_of)]
Ops = Annotated[Admin, Depends(admin_of)]


def refused(run: Callable[[], Any]) -> Any:
    """Run a change; a refusal becomes 400 (404 for an unknown deployment)."""
    try:
        return run()
    except UnknownDeploymentError as exc:
        raise HTTPException(404, str(exc)) from None
    except REFUSALS as exc:
        raise HTTPException(400, str(exc)) from None


def admin_router() -> APIRouter:
    """The /admin/v1 routes, for an app whose state.runtime has .engine and .settings.

    Handlers are plain functions: FastAPI runs them on its thread pool, so their database
    calls never block the event loop that serves /v1."""
    router = APIRouter(
        prefix=PREFIX,
        tags=["admin"],
        responses={401: {"description": "No valid key"}, 403: {"description": "No admin scope"}},
    )
    _model_routes(router)
    _deployment_routes(router)
    _alias_routes(router)
    _key_routes(router)
    _user_routes(router)
    _metric_routes(router)
    _audit_routes(router)
    return router


def _model_routes(router: APIRouter) -> None:
    """Models in the store: list, add, rescan, delete."""

    @router.get("/models", summary="Models in the store")
    def list_models(who: Who, admin: Ops) -> list[dict[str, Any]]:
        return [describe_model(m) for m in admin.models().list()]

    @router.post("/models", summary="Copy a GGUF on the gateway's machine into the store")
    def add_model(body: ModelAddSpec, who: Who, admin: Ops) -> dict[str, str]:
        if not body.demo and not body.path:
            raise HTTPException(400, "give a path to a .gguf file, or demo: true")
        path = Path(body.path) if body.path else None
        name = refused(lambda: admin.add_model(who, path, body.name, demo=body.demo))
        return {"name": name}

    @router.post("/models/scan", summary="Rescan the model store")
    def scan_models(who: Who, admin: Ops) -> dict[str, Any]:
        report = admin.scan_models(who)
        return {"valid": report.valid, "invalid": report.invalid, "missing": report.missing}

    @router.delete("/models/{name:path}", summary="Delete a model no deployment uses")
    def delete_model(name: NamePath, who: Who, admin: Ops) -> dict[str, str]:
        refused(lambda: admin.delete_model(who, name))
        return {"deleted": name}


def _deployment_routes(router: APIRouter) -> None:
    """Deployments: list, create, scale, roll, stop, start, delete."""

    @router.get("/deployments", summary="Deployments")
    def list_deployments(who: Who, admin: Ops) -> list[dict[str, Any]]:
        return [
            {**deployment_json(d), "ready_replicas": d.ready_replicas, "error": d.error}
            for d in admin.deployments().all()
        ]

    @router.post("/deployments", summary="Deploy a model under an alias", status_code=201)
    def create_deployment(body: DeploymentSpec, who: Who, admin: Ops) -> dict[str, Any]:
        return deployment_json(refused(lambda: admin.deploy_spec(who, body)))

    @router.post("/deployments/{deployment_id}/scale", summary="Set the number of replicas")
    def scale(
        deployment_id: DeploymentIdPath, body: ScaleSpec, who: Who, admin: Ops
    ) -> dict[str, Any]:
        return deployment_json(refused(lambda: admin.scale(who, deployment_id, body.replicas)))

    @router.post("/deployments/{deployment_id}/roll", summary="Roll to a new model or settings")
    def roll(
        deployment_id: DeploymentIdPath, body: RollSpec, who: Who, admin: Ops
    ) -> dict[str, Any]:
        view = refused(
            lambda: admin.roll(
                who, deployment_id, body.serving(), allow_ctx_overflow=body.allow_ctx_overflow
            )
        )
        return deployment_json(view)

    @router.post("/deployments/{deployment_id}/stop", summary="Stop every replica")
    def stop(deployment_id: DeploymentIdPath, who: Who, admin: Ops) -> dict[str, Any]:
        return deployment_json(refused(lambda: admin.stop(who, deployment_id)))

    @router.post("/deployments/{deployment_id}/start", summary="Start a stopped deployment")
    def start(deployment_id: DeploymentIdPath, who: Who, admin: Ops) -> dict[str, Any]:
        return deployment_json(refused(lambda: admin.start(who, deployment_id)))

    @router.delete("/deployments/{deployment_id}", summary="Delete a deployment")
    def delete_deployment(deployment_id: DeploymentIdPath, who: Who, admin: Ops) -> dict[str, int]:
        refused(lambda: admin.delete_deployment(who, deployment_id))
        return {"deleted": deployment_id}


def _alias_routes(router: APIRouter) -> None:
    """Aliases: their settings, and the traffic weights of their deployments."""

    @router.get("/aliases", summary="Alias settings (aliases without a row get the defaults)")
    def list_aliases(who: Who, admin: Ops) -> dict[str, Any]:
        return {a: alias_json(v) for a, v in admin.alias_settings().items()}

    @router.put("/aliases/{alias}/weights", summary="Traffic weights of an alias's deployments")
    def set_weights(alias: NamePath, body: WeightsSpec, who: Who, admin: Ops) -> dict[str, Any]:
        refused(lambda: admin.set_traffic_weights(who, alias, body.weights))
        return {str(d.id): d.traffic_weight for d in admin.deployments().all() if d.alias == alias}

    @router.put("/aliases/{alias}/settings", summary="Cache, text logging and rate limit")
    def set_alias(alias: NamePath, body: AliasSpec, who: Who, admin: Ops) -> dict[str, Any]:
        refused(lambda: admin.set_alias_settings(who, alias, body.settings()))
        return alias_json(body.settings())


def _key_routes(router: APIRouter) -> None:
    """API keys: list, create, change, revoke."""

    @router.get("/keys", summary="API keys (never the keys themselves)")
    def list_keys(who: Who, admin: Ops) -> list[dict[str, Any]]:
        return [key_json(k) for k in admin.keys().list()]

    @router.post(
        "/keys", summary="Create a key; its secret is in this answer only", status_code=201
    )
    def create_key(body: KeySpec, who: Who, admin: Ops) -> dict[str, Any]:
        created = refused(lambda: admin.create_key(who, body.name, body.policy()))
        return {**asdict(created)}

    @router.put("/keys/{name_or_id}", summary="Change an active key's scopes, expiry and limits")
    def set_key(name_or_id: NamePath, body: KeyPolicySpec, who: Who, admin: Ops) -> dict[str, Any]:
        return key_json(refused(lambda: admin.set_key_policy(who, name_or_id, body.policy())))

    @router.delete("/keys/{name_or_id}", summary="Revoke a key by name or id")
    def revoke_key(name_or_id: NamePath, who: Who, admin: Ops) -> dict[str, list[int]]:
        return {"revoked": refused(lambda: admin.revoke_key(who, name_or_id))}


def _user_routes(router: APIRouter) -> None:
    """Dashboard accounts: list, create, change, delete."""

    @router.get("/users", summary="Dashboard accounts")
    def list_users(who: Who, admin: Ops) -> list[dict[str, Any]]:
        return [operator_json(o) for o in admin.accounts().list()]

    @router.post("/users", summary="Create a dashboard account", status_code=201)
    def create_user(body: UserCreateSpec, who: Who, admin: Ops) -> dict[str, Any]:
        view = refused(lambda: admin.add_user(who, body.name, body.password, body.role))
        return operator_json(view)

    @router.patch("/users/{name}", summary="Change role, disable/enable, reset password")
    def change_user(name: NamePath, body: UserChangeSpec, who: Who, admin: Ops) -> dict[str, Any]:
        def run() -> Any:
            view = admin.accounts().get(name)
            if body.role is not None:
                view = admin.set_role(who, name, body.role)
            if body.disabled is not None:
                view = admin.set_disabled(who, name, body.disabled)
            if body.password is not None:
                view = admin.reset_password(who, name, body.password)
            return view

        return operator_json(refused(run))

    @router.delete("/users/{name}", summary="Delete a dashboard account")
    def delete_user(name: NamePath, who: Who, admin: Ops) -> dict[str, str]:
        refused(lambda: admin.remove_user(who, name))
        return {"deleted": name}


def _metric_routes(router: APIRouter) -> None:
    """Monitoring's numbers for scripts."""

    @router.get("/metrics", summary="Monitoring's tile numbers for a range (metric catalog)")
    def metrics(
        who: Who,
        request: Request,
        range: Annotated[
            Text, Query(max_length=64, description="1h, 6h, 24h, 3d, 7d or 30d")
        ] = "24h",
        alias: QueryText = None,
        include: Annotated[
            list[Text] | None, Query(description="Also count: batch, synthetic")
        ] = None,
        metric: Annotated[list[Text] | None, Query(description="Default: the tiles")] = None,
    ) -> dict[str, Any]:
        try:
            query = metrics_query(range, alias, include or [], metric or [])
        except (UnknownRange, UnknownMetric, UnknownTrafficClass) as exc:
            raise HTTPException(400, str(exc)) from None
        return metrics_report(engine_of(request), query)


def _audit_routes(router: APIRouter) -> None:
    """The audit log, for scripts."""

    @router.get("/audit", summary="The audit log, newest first")
    def audit(
        who: Who,
        request: Request,
        actor: QueryText = None,
        action: Annotated[
            Text | None, Query(max_length=4096, description="Prefix, e.g. deployment.")
        ] = None,
        via: Annotated[Via | None, Query(description="page, cli, api, apply or system")] = None,
        origin: Annotated[
            Text | None,
            Query(max_length=4096, description='Page, command or route, e.g. "herd deploy"'),
        ] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
    ) -> list[dict[str, Any]]:
        rows = read_audit(
            engine_of(request), actor=actor, action=action, via=via, origin=origin,
            since=since, until=until, limit=limit,
        )  # fmt: skip
        return [{**asdict(r), "at": r.at.isoformat()} for r in rows]
