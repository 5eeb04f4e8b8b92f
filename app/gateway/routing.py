"""Who can serve what, loaded from PostgreSQL in one pass: aliases -> deployments (with
traffic weights) -> live workers, plus alias settings and API key hashes.

The gateway reloads this in the background (RoutingState.run) and answers every request
from the last snapshot: no query per request, and serving goes on while the database is away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, RowMapping, text
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.control.aliases import AliasSettings, AliasStore
from app.gateway.key_limits import KeyRule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerTarget:
    """A ready worker with a fresh heartbeat."""

    id: int
    url: str
    deployment_id: int | None
    model_id: int | None
    slots_total: int


@dataclass(frozen=True)
class DeploymentTarget:
    """One model version under an alias; id None groups external workers that registered
    with an alias but no deployment."""

    id: int | None
    alias: str
    model_id: int | None
    model_name: str
    weight: int
    workers: tuple[WorkerTarget, ...]
    # 'active' or 'failed' (the supervisor gave up): a failed one is not worth waiting for.
    state: str = "active"


@dataclass(frozen=True)
class AliasRoute:
    alias: str
    deployments: tuple[DeploymentTarget, ...]
    settings: AliasSettings


@dataclass(frozen=True)
class RoutingSnapshot:
    """Everything a request needs to know, as of loaded_at (monotonic seconds)."""

    routes: dict[str, AliasRoute] = field(default_factory=dict)
    # sha256 of each active key -> its id.
    key_ids: dict[str, int] = field(default_factory=dict)
    # Active keys with a scope or a limit -> what the gateway enforces for them.
    key_rules: dict[int, KeyRule] = field(default_factory=dict)
    # Once any key was ever created, calls need one (revoking the last key opens nothing).
    keys_exist: bool = False
    loaded_at: float = 0.0
    loaded: bool = False

    @property
    def live_worker_ids(self) -> set[int]:
        return {w.id for r in self.routes.values() for d in r.deployments for w in d.workers}


DEPLOYMENTS_SQL = text(
    """
    SELECT d.id, d.alias, d.model_id, m.name AS model_name, d.traffic_weight, d.state
    FROM deployments d JOIN models m ON m.id = d.model_id
    WHERE d.state <> 'stopped'
    """
)
# The database's clock judges heartbeat age, so gateway and worker clocks need not agree.
WORKERS_SQL = text(
    """
    SELECT w.id, w.url, w.deployment_id, w.model_id, w.alias, w.slots_total,
           m.name AS model_name,
           extract(epoch FROM now() - w.heartbeat_at) AS heartbeat_age_s
    FROM workers w LEFT JOIN models m ON m.id = w.model_id
    WHERE w.state = 'ready'
    """
)
KEYS_SQL = text(
    """
    SELECT id, key_hash,
           revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AS active,
           scopes, rate_limit_rpm, rate_limit_tpm, daily_token_quota
    FROM api_keys
    """
)


def load_snapshot(
    engine: Engine,
    settings: Settings,
    keep_worker_ids: frozenset[int] = frozenset(),
) -> RoutingSnapshot:
    """Read the routing state. keep_worker_ids stay live whatever their heartbeat age says
    (used right after a database outage, when no heartbeat could be written)."""
    timeout_s = settings.worker_live_s
    with engine.connect() as conn:
        deployments = conn.execute(DEPLOYMENTS_SQL).mappings().all()
        workers = conn.execute(WORKERS_SQL).mappings().all()
        keys = conn.execute(KEYS_SQL).mappings().all()
    alias_settings = AliasStore(engine).all()

    by_deployment: dict[int, list[WorkerTarget]] = {}
    external: dict[str, list[tuple[WorkerTarget, str]]] = {}
    for w in workers:
        age = float(w["heartbeat_age_s"])
        if age > timeout_s and w["id"] not in keep_worker_ids:
            continue
        target = WorkerTarget(
            id=w["id"],
            url=w["url"].rstrip("/"),
            deployment_id=w["deployment_id"],
            model_id=w["model_id"],
            slots_total=max(1, w["slots_total"] or 1),
        )
        if w["deployment_id"] is not None:
            by_deployment.setdefault(w["deployment_id"], []).append(target)
        elif w["alias"]:
            external.setdefault(w["alias"], []).append((target, w["model_name"] or w["alias"]))

    grouped: dict[str, list[DeploymentTarget]] = {}
    for d in deployments:
        grouped.setdefault(d["alias"], []).append(
            DeploymentTarget(
                id=d["id"],
                alias=d["alias"],
                model_id=d["model_id"],
                model_name=d["model_name"],
                weight=d["traffic_weight"],
                workers=tuple(sorted(by_deployment.get(d["id"], []), key=lambda t: t.id)),
                state=d["state"],
            )
        )
    for alias, members in external.items():
        grouped.setdefault(alias, []).append(
            DeploymentTarget(
                id=None,
                alias=alias,
                model_id=members[0][0].model_id,
                model_name=members[0][1],
                weight=100,
                workers=tuple(t for t, _ in members),
            )
        )
    defaults = AliasSettings.defaults(settings)
    routes = {
        alias: AliasRoute(
            alias=alias,
            deployments=tuple(sorted(ds, key=lambda d: (d.id is None, d.id or 0))),
            settings=alias_settings.get(alias, defaults),
        )
        for alias, ds in grouped.items()
    }
    return RoutingSnapshot(
        routes=routes,
        key_ids={k["key_hash"]: k["id"] for k in keys if k["active"]},
        key_rules=_key_rules(keys),
        keys_exist=bool(keys),
        loaded_at=time.monotonic(),
        loaded=True,
    )


def _key_rules(keys: Sequence[RowMapping]) -> dict[int, KeyRule]:
    rules = {}
    for k in keys:
        scopes = k["scopes"]
        rule = KeyRule(
            scopes=frozenset(scopes) if scopes is not None else None,
            rpm=k["rate_limit_rpm"],
            tpm=k["rate_limit_tpm"],
            daily_tokens=k["daily_token_quota"],
        )
        if k["active"] and (rule.scopes is not None or rule.limited):
            rules[int(k["id"])] = rule
    return rules


class RoutingState:
    """The current snapshot, reloaded every HERD_GATEWAY_REFRESH_S by run()."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.snapshot = RoutingSnapshot()
        self.database_ok = False
        self._recovered_at: float | None = None

    def refresh(self) -> bool:
        """Reload (blocking; run it in a thread). On failure the last snapshot stays."""
        now = time.monotonic()
        keep: frozenset[int] = frozenset()
        # Right after an outage every heartbeat looks old: for one timeout keep the workers
        # we knew, until their own heartbeats land again.
        grace = self.settings.worker_live_s
        if self._recovered_at is not None and now - self._recovered_at < grace:
            keep = frozenset(self.snapshot.live_worker_ids)
        try:
            snapshot = load_snapshot(self.engine, self.settings, keep)
        except SQLAlchemyError as exc:
            if self.database_ok or not self.snapshot.loaded:
                logger.warning("cannot load routing state; serving from the last one: %s", exc)
            self.database_ok = False
            return False
        if not self.database_ok and self.snapshot.loaded:
            self._recovered_at = now
            keep = frozenset(self.snapshot.live_worker_ids)
            snapshot = load_snapshot(self.engine, self.settings, keep)
            logger.info("database reachable again; routing state reloaded")
        self.snapshot = snapshot
        self.database_ok = True
        return True

    async def run(self) -> None:
        """Reload forever; cancelled at shutdown."""
        while True:
            await asyncio.sleep(self.settings.gateway_refresh_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # a surprise must not end routing updates
                logger.exception("routing refresh failed")
