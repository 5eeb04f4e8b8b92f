"""Which node runs which replica: node heartbeats, and placement decided under one lock.

Every supervisor heartbeats its node row and, on each pass, runs the placement step in one
transaction holding a cluster-wide advisory lock: drop placements on dead nodes (silent for
node_timeout_s), on nodes that no longer match, or beyond the replica count; then give each
unplaced replica of an active deployment to the live matching node with the fewest replicas
of that deployment (then the fewest overall). Two supervisors never both hold the lock, and
(deployment_id, replica) is the primary key, so a replica is never placed twice.

With one node and no selectors every replica lands on that node: today's behaviour.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, text

ReplicaKey = tuple[int, int]  # (deployment_id, replica)


def lock_key(name: str) -> int:
    """A stable signed 64-bit PostgreSQL advisory lock key for a name."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


PLACEMENT_LOCK = lock_key("herd-placement")


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Selector:
    """What a deployment asks of nodes, and how many replicas it wants placed."""

    deployment_id: int
    replicas: int
    node: str | None
    labels: Mapping[str, str] | None
    # Only active deployments get new placements; failed ones keep what they have.
    active: bool = True

    def matches(self, node: NodeInfo) -> bool:
        if self.node is not None and node.name != self.node:
            return False
        return all(node.labels.get(k) == v for k, v in (self.labels or {}).items())


@dataclass(frozen=True)
class Plan:
    remove: list[ReplicaKey]
    add: list[tuple[int, int, str]]  # (deployment_id, replica, node)

    def __bool__(self) -> bool:
        return bool(self.remove or self.add)


def plan_placements(
    selectors: list[Selector], live: list[NodeInfo], placed: Mapping[ReplicaKey, str]
) -> Plan:
    """The changes that make placed match selectors on the live nodes (a pure function)."""
    nodes = {n.name: n for n in live}
    wanted = {s.deployment_id: s for s in selectors}
    remove: list[ReplicaKey] = []
    kept: dict[ReplicaKey, str] = {}
    for key, node in placed.items():
        selector = wanted.get(key[0])
        if (
            selector is None
            or key[1] >= selector.replicas
            or node not in nodes
            or not selector.matches(nodes[node])
        ):
            remove.append(key)
        else:
            kept[key] = node
    load = Counter(kept.values())
    per_deployment = Counter((d, node) for (d, _), node in kept.items())
    add: list[tuple[int, int, str]] = []
    for selector in sorted(selectors, key=lambda s: s.deployment_id):
        if not selector.active:
            continue
        candidates = sorted(n.name for n in live if selector.matches(n))
        if not candidates:
            continue
        for replica in range(selector.replicas):
            if (selector.deployment_id, replica) in kept:
                continue
            # Spread one deployment's replicas first, then even out the nodes.
            node = min(
                candidates,
                key=lambda n: (per_deployment[(selector.deployment_id, n)], load[n], n),
            )
            add.append((selector.deployment_id, replica, node))
            load[node] += 1
            per_deployment[(selector.deployment_id, node)] += 1
    return Plan(sorted(remove), add)


LIVE_NODES_SQL = text(
    "SELECT name, labels FROM nodes "
    "WHERE heartbeat_at > now() - make_interval(secs => :timeout_s) ORDER BY name"
)
SELECTORS_SQL = text(
    "SELECT id, replicas, node, node_labels, state FROM deployments "
    "WHERE NOT external AND state IN ('active', 'failed')"
)
HEARTBEAT_SQL = text(
    "INSERT INTO nodes (name, labels) VALUES (:name, CAST(:labels AS jsonb)) "
    "ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, heartbeat_at = now()"
)


class Placer:
    """One node's heartbeat and its share of the placement work."""

    def __init__(self, engine: Engine, node: str, labels: Mapping[str, str]) -> None:
        self.engine = engine
        self.node = node
        self.labels = dict(labels)

    def heartbeat(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(HEARTBEAT_SQL, {"name": self.node, "labels": json.dumps(self.labels)})

    def place(self, node_timeout_s: float) -> Plan:
        """Run the placement step for every deployment; returns what it changed."""
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PLACEMENT_LOCK})
            live = [
                NodeInfo(r.name, r.labels or {})
                for r in conn.execute(LIVE_NODES_SQL, {"timeout_s": node_timeout_s})
            ]
            selectors = [
                Selector(r.id, r.replicas, r.node, r.node_labels, active=r.state == "active")
                for r in conn.execute(SELECTORS_SQL)
            ]
            placed = {
                (int(r.deployment_id), int(r.replica)): str(r.node)
                for r in conn.execute(text("SELECT deployment_id, replica, node FROM placements"))
            }
            plan = plan_placements(selectors, live, placed)
            # Statements only when something changes: each one NOTIFYs every supervisor.
            if plan.remove:
                conn.execute(
                    text(
                        "DELETE FROM placements WHERE (deployment_id, replica) IN "
                        "(SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:replicas AS int[])))"
                    ),
                    {"ids": [k[0] for k in plan.remove], "replicas": [k[1] for k in plan.remove]},
                )
            if plan.add:
                conn.execute(
                    text(
                        "INSERT INTO placements (deployment_id, replica, node) "
                        "VALUES (:deployment_id, :replica, :node)"
                    ),
                    [{"deployment_id": d, "replica": r, "node": n} for d, r, n in plan.add],
                )
        return plan

    def leave(self) -> None:
        """A clean exit: give this node's replicas up now instead of after node_timeout_s."""
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PLACEMENT_LOCK})
            conn.execute(text("DELETE FROM placements WHERE node = :node"), {"node": self.node})
            conn.execute(text("DELETE FROM nodes WHERE name = :node"), {"node": self.node})
