"""Table rows for the Routing page: traffic splits, alias settings, API keys (no Streamlit)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from app.control.aliases import AliasSettings
from app.control.deployments import DeploymentView, traffic_shares
from app.control.keys import ApiKeyView


def by_alias(deployments: Sequence[DeploymentView]) -> dict[str, list[DeploymentView]]:
    """Deployments grouped by alias, aliases sorted, each group oldest deployment first."""
    grouped: dict[str, list[DeploymentView]] = {}
    for d in sorted(deployments, key=lambda d: d.id):
        grouped.setdefault(d.alias, []).append(d)
    return dict(sorted(grouped.items()))


def _routed_weights(
    deployments: Sequence[DeploymentView], weights: Mapping[int, int]
) -> dict[int, int]:
    # Stopped deployments get no traffic whatever their weight (the gateway skips them).
    return {
        d.id: weights.get(d.id, d.traffic_weight) if d.state != "stopped" else 0
        for d in deployments
    }


def split_rows(
    deployments: Sequence[DeploymentView], new_weights: Mapping[int, int]
) -> list[dict[str, Any]]:
    """Per deployment: weight and share of the alias's traffic now and with new_weights."""
    now = traffic_shares(_routed_weights(deployments, {}))
    after = traffic_shares(_routed_weights(deployments, new_weights))
    return [
        {
            "deployment": d.id,
            "model version": d.model_name,
            "state": d.state,
            "ready workers": d.ready_replicas,
            "weight now": d.traffic_weight,
            "share now": f"{now[d.id]:.1%}",
            "new weight": new_weights.get(d.id, d.traffic_weight),
            "share after saving": f"{after[d.id]:.1%}",
        }
        for d in deployments
    ]


def alias_rows(
    aliases: Sequence[str], stored: Mapping[str, AliasSettings], defaults: AliasSettings
) -> list[dict[str, Any]]:
    rows = []
    for alias in aliases:
        s = stored.get(alias, defaults)
        rows.append(
            {
                "alias": alias,
                "response cache": "on" if s.cache_enabled else "off",
                "cache TTL (s)": s.cache_ttl_s,
                "text logging": "on" if s.log_text else "off",
                "rate limit (rpm)": s.rate_limit_rpm or "none",
                "semantic cache": (
                    f"{s.semantic_cache_alias} ≥ {s.semantic_cache_threshold:g}"
                    if s.semantic_cache_alias
                    else "off"
                ),
                "settings": "own" if alias in stored else "defaults",
            }
        )
    return rows


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value else "-"


def key_rows(keys: Sequence[ApiKeyView]) -> list[dict[str, Any]]:
    return [
        {
            "id": k.id,
            "name": k.name,
            "key starts with": k.prefix + "…",
            "created": _when(k.created_at),
            "created by": k.created_by or "-",
            "last used": _when(k.last_used_at),
            "revoked": _when(k.revoked_at),
            "state": "active" if k.active else "revoked",
            "aliases": ", ".join(k.policy.scopes) if k.policy.scopes is not None else "all",
            "admin": k.policy.admin,
            "expires": _when(k.policy.expires_at),
            "requests/min": k.policy.rate_limit_rpm,
            "tokens/min": k.policy.rate_limit_tpm,
            "tokens/day": k.policy.daily_token_quota,
        }
        for k in keys
    ]
