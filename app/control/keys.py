"""Gateway API keys: created and revoked by operators; only sha256 hashes are stored.

A key is shown once, at creation. The gateway loads the hashes with its routing state, so
checking a key costs one sha256 and a dict lookup, never a query.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, func, insert, select, update

from app.common.bounds import JSON_SAFE_MAX, PG_BIGINT_MAX, PG_INTEGER_MAX, Bound
from app.db.bind import Bind, begin, connect
from app.db.tables import ApiKey
from app.openai_api.text import bad_text_at

KEY_PREFIX = "herd-"
# Enough of the key to tell keys apart in a list, far too little to guess the rest.
SHOWN_CHARS = 12
# What operators send about a key, bounded where it is defined (app/common/bounds.py).
KEY_NAME_LENGTH = Bound(1, 128)
SCOPES = Bound(0, 1000)
RATE_LIMIT_RPM = Bound(1, PG_INTEGER_MAX, "or no limit")
RATE_LIMIT_TPM = Bound(1, PG_INTEGER_MAX, "or no limit")
DAILY_TOKEN_QUOTA = Bound(1, JSON_SAFE_MAX, "or no limit")


class ApiKeyError(ValueError):
    """A key operation was refused; the message says why."""


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyPolicy:
    """What a key may do: the aliases it may call (None: all), the admin API, until when,
    and its limits (None: no limit)."""

    scopes: tuple[str, ...] | None = None
    admin: bool = False
    expires_at: datetime | None = None
    rate_limit_rpm: int | None = None
    rate_limit_tpm: int | None = None
    daily_token_quota: int | None = None

    def __post_init__(self) -> None:
        for bound, label, value in (
            (RATE_LIMIT_RPM, "requests per minute", self.rate_limit_rpm),
            (RATE_LIMIT_TPM, "tokens per minute", self.rate_limit_tpm),
            (DAILY_TOKEN_QUOTA, "daily token quota", self.daily_token_quota),
        ):
            problem = bound.problem(f"a key's {label}", value)
            if problem is not None:
                raise ApiKeyError(problem)
        if self.scopes is not None and not all(a.strip() for a in self.scopes):
            raise ApiKeyError("a key's scopes are alias names, none empty")
        if self.scopes is not None and len(self.scopes) > SCOPES.high:
            raise ApiKeyError(f"a key names at most {SCOPES.high} aliases in its scopes")
        bad = bad_text_at(list(self.scopes or ()), "scopes")
        if bad is not None:
            raise ApiKeyError(bad)

    def columns(self) -> dict[str, Any]:
        return {
            "scopes": list(self.scopes) if self.scopes is not None else None,
            "admin": self.admin,
            "expires_at": self.expires_at,
            "rate_limit_rpm": self.rate_limit_rpm,
            "rate_limit_tpm": self.rate_limit_tpm,
            "daily_token_quota": self.daily_token_quota,
        }

    @classmethod
    def from_row(cls, row: RowMapping) -> KeyPolicy:
        scopes = row["scopes"]
        return cls(
            scopes=tuple(scopes) if scopes is not None else None,
            admin=bool(row["admin"]),
            expires_at=row["expires_at"],
            rate_limit_rpm=row["rate_limit_rpm"],
            rate_limit_tpm=row["rate_limit_tpm"],
            daily_token_quota=row["daily_token_quota"],
        )


@dataclass(frozen=True)
class CreatedKey:
    """A new key; `key` exists only here, the database keeps its hash."""

    id: int
    name: str
    prefix: str
    key: str


@dataclass(frozen=True)
class ApiKeyView:
    id: int
    name: str
    prefix: str
    created_by: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    policy: KeyPolicy = field(default_factory=KeyPolicy)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class ApiKeys:
    """The api_keys table: create, list, revoke."""

    def __init__(self, engine: Bind) -> None:
        self.engine = engine

    def create(
        self, name: str, created_by: str | None = None, policy: KeyPolicy | None = None
    ) -> CreatedKey:
        name = name.strip()
        if not name:
            raise ApiKeyError("a key needs a name")
        problem = KEY_NAME_LENGTH.length_problem("a key's name", name) or bad_text_at(name, "name")
        if problem is not None:
            raise ApiKeyError(problem)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        prefix = key[:SHOWN_CHARS]
        with begin(self.engine) as conn:
            taken = conn.execute(
                select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
            ).first()
            if taken is not None:
                raise ApiKeyError(f"an active key named {name!r} exists; revoke it first")
            key_id = conn.execute(
                insert(ApiKey)
                .values(
                    name=name,
                    key_hash=hash_key(key),
                    prefix=prefix,
                    created_by=created_by,
                    **(policy or KeyPolicy()).columns(),
                )
                .returning(ApiKey.id)
            ).scalar_one()
        return CreatedKey(id=int(key_id), name=name, prefix=prefix, key=key)

    def list(self) -> builtins.list[ApiKeyView]:
        with connect(self.engine) as conn:
            rows = conn.execute(select(ApiKey).order_by(ApiKey.id)).mappings().all()
        return [
            ApiKeyView(
                id=r["id"],
                name=r["name"],
                prefix=r["prefix"],
                created_by=r["created_by"],
                created_at=r["created_at"],
                last_used_at=r["last_used_at"],
                revoked_at=r["revoked_at"],
                policy=KeyPolicy.from_row(r),
            )
            for r in rows
        ]

    def active(self, name: str) -> ApiKeyView | None:
        """The active key with that name, if any."""
        return next((k for k in self.list() if k.active and k.name == name), None)

    def set_policy(self, key_id: int, policy: KeyPolicy) -> None:
        """Change what an active key may do; gateways apply it within a second."""
        with begin(self.engine) as conn:
            changed = conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(**policy.columns())
                .returning(ApiKey.id)
            ).first()
        if changed is None:
            raise ApiKeyError(f"no active key with id {key_id}")

    def revoke(self, name_or_id: str) -> builtins.list[int]:
        """Revoke the active keys with that name (or that id); their ids. Raises if none."""
        match = ApiKey.name == name_or_id
        # isdigit() alone takes '³' or '٣', which int() then refuses: ASCII digits only, and
        # only an id a bigint column can hold.
        if name_or_id.isascii() and name_or_id.isdigit() and int(name_or_id) <= PG_BIGINT_MAX:
            match = match | (ApiKey.id == int(name_or_id))
        with begin(self.engine) as conn:
            ids = (
                conn.execute(
                    update(ApiKey)
                    .where(match, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=func.now())
                    .returning(ApiKey.id)
                )
                .scalars()
                .all()
            )
        if not ids:
            raise ApiKeyError(f"no active key named {name_or_id!r} or with that id")
        return [int(i) for i in ids]

    def touch(self, key_ids: set[int]) -> None:
        """Record that these keys were used just now (batched by the request log)."""
        if not key_ids:
            return
        with begin(self.engine) as conn:
            conn.execute(
                update(ApiKey).where(ApiKey.id.in_(key_ids)).values(last_used_at=func.now())
            )
