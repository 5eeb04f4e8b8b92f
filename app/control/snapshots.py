"""What the audit log stores of each kind of target: plain JSON, never a secret."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from app.control.accounts import OperatorView
from app.control.aliases import AliasSettings
from app.control.deployments import DeploymentView
from app.control.keys import ApiKeyView, KeyPolicy


def deployment_json(d: DeploymentView) -> dict[str, Any]:
    serving = asdict(d.serving)
    if serving["tensor_split"] is not None:
        serving["tensor_split"] = list(serving["tensor_split"])
    return {
        "id": d.id,
        "alias": d.alias,
        "replicas": d.replicas,
        "state": d.state,
        "generation": d.generation,
        "node": d.node,
        "node_labels": d.node_labels,
        "traffic_weight": d.traffic_weight,
        **serving,
    }


def alias_json(a: AliasSettings) -> dict[str, Any]:
    return asdict(a)


def policy_json(p: KeyPolicy) -> dict[str, Any]:
    return {
        "scopes": list(p.scopes) if p.scopes is not None else None,
        "admin": p.admin,
        "expires_at": p.expires_at.isoformat() if p.expires_at else None,
        "rate_limit_rpm": p.rate_limit_rpm,
        "rate_limit_tpm": p.rate_limit_tpm,
        "daily_token_quota": p.daily_token_quota,
    }


def key_json(k: ApiKeyView) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "active": k.active,
        **policy_json(k.policy),
    }


def operator_json(o: OperatorView) -> dict[str, Any]:
    return {"name": o.name, "role": o.role.value, "disabled": o.disabled}
