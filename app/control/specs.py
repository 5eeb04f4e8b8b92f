"""The shapes of what the admin API accepts and herd.yaml holds: one definition for both,
validated by pydantic (unknown keys and wrong types are refused with where they are).

Every number and text is bounded by the range its owner declares (app/common/bounds.py), every
text is one PostgreSQL can store (no NUL, no lone surrogate), and a boolean is true or false
only (never "yes"), so nothing out of range reaches the database."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from typing import Annotated, Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model

from app.common.bounds import PG_BIGINT_MAX, Bound
from app.control.accounts import NAME_LENGTH, PASSWORD_LENGTH, Role
from app.control.aliases import (
    CACHE_TTL_S,
    DEFAULT_SEMANTIC_THRESHOLD,
    RATE_LIMIT_RPM,
    AliasSettings,
)
from app.control.deployments import (
    ALIAS_LENGTH,
    DEFAULT_TRAFFIC_WEIGHT,
    LABEL_LENGTH,
    MODEL_NAME_LENGTH,
    NODE_LABELS,
    NODE_LENGTH,
    REPLICAS,
    TRAFFIC_WEIGHT,
    DeploymentRequest,
    ServingSettings,
)
from app.control.keys import (
    DAILY_TOKEN_QUOTA,
    KEY_NAME_LENGTH,
    RATE_LIMIT_TPM,
    SCOPES,
    KeyPolicy,
)
from app.control.keys import RATE_LIMIT_RPM as KEY_RATE_LIMIT_RPM
from app.engine.serving import TENSOR_SPLIT_GPUS, ServingParams, serving_values_from
from app.openai_api.text import Text

# A deployment's id, as the database numbers them.
DEPLOYMENT_ID = Bound(1, PG_BIGINT_MAX)
# A path on the gateway's machine.
PATH_LENGTH = Bound(1, 4096)
DeploymentId = Annotated[int, DEPLOYMENT_ID.field()]
AliasName = Annotated[Text, ALIAS_LENGTH.length()]
LabelText = Annotated[Text, LABEL_LENGTH.length()]


class Spec(BaseModel):
    # Infinity and NaN are no number an operator means (YAML spells them .inf and .nan).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _ModelSpec(Spec):
    model: Text = MODEL_NAME_LENGTH.length(
        description="Model name in the store (herd models list)."
    )

    def serving(self) -> ServingSettings:
        return ServingSettings(model=self.model, **serving_values_from(self))


def _serving_spec_fields() -> dict[str, Any]:
    """One pydantic field per ServingParams field, with its type, default, help and range."""
    hints = get_type_hints(ServingParams)
    out: dict[str, Any] = {}
    for f in fields(ServingParams):
        kind: Any = hints[f.name]
        if kind is bool:
            kind = StrictBool
        elif f.name == "tensor_split":
            kind = Annotated[tuple[float, ...], TENSOR_SPLIT_GPUS.length()] | None
        bound: Bound | None = f.metadata["bound"]
        help_text: str = f.metadata["help"]
        out[f.name] = (
            kind,
            bound.field(f.default, description=help_text)
            if bound
            else Field(default=f.default, description=help_text),
        )
    return out


# How each replica runs: the model (its name in the store) and llama.cpp's settings, whose
# names, types, defaults and help come from their one definition (app/engine/serving.py).
ServingSpec = create_model("ServingSpec", __base__=_ModelSpec, **_serving_spec_fields())


class DeploymentSpec(ServingSpec):
    """A deployment: a model served under an alias by N replicas."""

    alias: AliasName = Field(description="The name clients call (OpenAI `model`).")
    replicas: int = REPLICAS.field(1)
    node: Annotated[Text, NODE_LENGTH.length()] | None = Field(
        default=None, description="Run only on this node."
    )
    node_labels: Annotated[dict[LabelText, LabelText], NODE_LABELS.length()] = Field(
        default_factory=dict, description="Run only on nodes carrying all of these labels."
    )
    weight: int = TRAFFIC_WEIGHT.field(
        DEFAULT_TRAFFIC_WEIGHT, description="Share of the alias's traffic."
    )
    stopped: StrictBool = Field(
        default=False, description="Keep the deployment but run no replica."
    )
    allow_ctx_overflow: StrictBool = Field(
        default=False, description="Allow n_ctx above the model's trained context."
    )

    def request(self) -> DeploymentRequest:
        return DeploymentRequest(
            alias=self.alias,
            serving=self.serving(),
            replicas=self.replicas,
            node=self.node,
            node_labels=self.node_labels,
            allow_ctx_overflow=self.allow_ctx_overflow,
            traffic_weight=self.weight,
        )


class ScaleSpec(Spec):
    replicas: int = REPLICAS.field()


class RollSpec(ServingSpec):
    allow_ctx_overflow: StrictBool = False


class WeightsSpec(Spec):
    weights: Annotated[
        dict[DeploymentId, Annotated[int, TRAFFIC_WEIGHT.field()]], Field(max_length=10_000)
    ] = Field(description="Deployment id -> weight (relative, >= 0).")


class AliasSpec(Spec):
    """The gateway's settings for one alias."""

    cache_enabled: StrictBool = True
    cache_ttl_s: float = CACHE_TTL_S.field(300.0)
    log_text: StrictBool = True
    rate_limit_rpm: int | None = RATE_LIMIT_RPM.field(None)
    semantic_cache_alias: AliasName | None = Field(
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

    scopes: Annotated[list[AliasName], SCOPES.length()] | None = Field(
        default=None, description="Aliases the key may call; null: every alias."
    )
    admin: StrictBool = Field(default=False, description="May call the admin API.")
    expires_at: datetime | None = None
    rate_limit_rpm: int | None = KEY_RATE_LIMIT_RPM.field(None, description="Requests per minute.")
    rate_limit_tpm: int | None = RATE_LIMIT_TPM.field(None, description="Tokens per minute.")
    daily_token_quota: int | None = DAILY_TOKEN_QUOTA.field(None, description="Tokens per UTC day.")

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
    name: Text = KEY_NAME_LENGTH.length()


class UserCreateSpec(Spec):
    name: Text = NAME_LENGTH.length()
    password: Text = PASSWORD_LENGTH.length()
    role: Role = Role.OPERATOR


class UserChangeSpec(Spec):
    role: Role | None = None
    disabled: StrictBool | None = None
    password: Text | None = PASSWORD_LENGTH.length(None)


class ModelAddSpec(Spec):
    path: Text | None = PATH_LENGTH.length(None, description="A .gguf on the gateway's machine.")
    name: Text | None = MODEL_NAME_LENGTH.length(
        None, description="Name in the store (default: file name)."
    )
    demo: StrictBool = Field(default=False, description="Add the demo model instead of a path.")


class HerdConfig(Spec):
    """herd.yaml: what should be deployed and how aliases and keys are set."""

    deployments: list[DeploymentSpec] = Field(default_factory=list, max_length=10_000)
    aliases: dict[AliasName, AliasSpec] = Field(default_factory=dict, max_length=10_000)
    keys: list[KeySpec] = Field(default_factory=list, max_length=10_000)
