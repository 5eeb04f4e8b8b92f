"""The shapes of what the admin API accepts and herd.yaml holds: one definition for both,
validated by pydantic (unknown keys and wrong types are refused with where they are)."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from app.accounts import Role
from app.deployments import ServingSettings
from app.engine.serving import ServingParams, serving_values_from
from app.gateway.aliases import DEFAULT_SEMANTIC_THRESHOLD, AliasSettings
from app.gateway.keys import KeyPolicy


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ModelSpec(Spec):
    model: str = Field(min_length=1, description="Model name in the store (herd models list).")

    def serving(self) -> ServingSettings:
        return ServingSettings(model=self.model, **serving_values_from(self))


def _serving_spec_fields() -> dict[str, Any]:
    """One pydantic field per ServingParams field, with its type, default and help."""
    hints = get_type_hints(ServingParams)
    return {
        f.name: (hints[f.name], Field(default=f.default, description=f.metadata["help"]))
        for f in fields(ServingParams)
    }


# How each replica runs: the model (its name in the store) and llama.cpp's settings, whose
# names, types, defaults and help come from their one definition (app/engine/serving.py).
ServingSpec = create_model("ServingSpec", __base__=_ModelSpec, **_serving_spec_fields())


class DeploymentSpec(ServingSpec):
    """A deployment: a model served under an alias by N replicas."""

    alias: str = Field(min_length=1, description="The name clients call (OpenAI `model`).")
    replicas: int = Field(default=1, ge=0)
    node: str | None = Field(default=None, description="Run only on this node.")
    node_labels: dict[str, str] = Field(
        default_factory=dict, description="Run only on nodes carrying all of these labels."
    )
    weight: int = Field(default=100, ge=0, description="Share of the alias's traffic.")
    stopped: bool = Field(default=False, description="Keep the deployment but run no replica.")
    allow_ctx_overflow: bool = Field(
        default=False, description="Allow n_ctx above the model's trained context."
    )


class ScaleSpec(Spec):
    replicas: int = Field(ge=0)


class RollSpec(ServingSpec):
    allow_ctx_overflow: bool = False


class WeightsSpec(Spec):
    weights: dict[int, int] = Field(description="Deployment id -> weight (relative, >= 0).")


class AliasSpec(Spec):
    """The gateway's settings for one alias."""

    cache_enabled: bool = True
    cache_ttl_s: float = Field(default=300.0, gt=0)
    log_text: bool = True
    rate_limit_rpm: int | None = Field(default=None, ge=1)
    semantic_cache_alias: str | None = Field(
        default=None, description="Embedding alias for the semantic cache; null: off."
    )
    semantic_cache_threshold: float = Field(
        default=DEFAULT_SEMANTIC_THRESHOLD,
        gt=0,
        le=1,
        description="Cosine similarity at or above which an earlier answer is reused.",
    )

    def settings(self) -> AliasSettings:
        return AliasSettings(**self.model_dump())


class KeyPolicySpec(Spec):
    """What a key may do; None means no restriction."""

    scopes: list[str] | None = Field(
        default=None, description="Aliases the key may call; null: every alias."
    )
    admin: bool = Field(default=False, description="May call the admin API.")
    expires_at: datetime | None = None
    rate_limit_rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    rate_limit_tpm: int | None = Field(default=None, ge=1, description="Tokens per minute.")
    daily_token_quota: int | None = Field(default=None, ge=1, description="Tokens per UTC day.")

    def policy(self) -> KeyPolicy:
        return KeyPolicy(
            scopes=tuple(self.scopes) if self.scopes is not None else None,
            admin=self.admin,
            # A time without a zone in herd.yaml or a request is UTC.
            expires_at=(
                self.expires_at.replace(tzinfo=UTC)
                if self.expires_at is not None and self.expires_at.tzinfo is None
                else self.expires_at
            ),
            rate_limit_rpm=self.rate_limit_rpm,
            rate_limit_tpm=self.rate_limit_tpm,
            daily_token_quota=self.daily_token_quota,
        )


class KeySpec(KeyPolicySpec):
    name: str = Field(min_length=1)


class UserCreateSpec(Spec):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8)
    role: Role = Role.OPERATOR


class UserChangeSpec(Spec):
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=8)


class ModelAddSpec(Spec):
    path: str | None = Field(default=None, description="A .gguf on the gateway's machine.")
    name: str | None = Field(default=None, description="Name in the store (default: file name).")
    demo: bool = Field(default=False, description="Add the demo model instead of a path.")


class HerdConfig(Spec):
    """herd.yaml: what should be deployed and how aliases and keys are set."""

    deployments: list[DeploymentSpec] = Field(default_factory=list)
    aliases: dict[str, AliasSpec] = Field(default_factory=dict)
    keys: list[KeySpec] = Field(default_factory=list)
