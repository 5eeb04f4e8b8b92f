"""Per-alias gateway settings (response cache, semantic cache, text logging, rate limit) in
`aliases`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert

from app.common.bounds import PG_INTEGER_MAX, Bound
from app.config import Settings
from app.db.bind import Bind, begin, connect
from app.db.pgvector import ensure_pgvector
from app.db.tables import Alias

# Cosine similarity of two normalised question embeddings; 0.95 reuses close paraphrases.
DEFAULT_SEMANTIC_THRESHOLD = 0.95
# How long a cached answer is served (up to a year), and calls per minute per gateway.
CACHE_TTL_S = Bound(0.001, 366 * 86_400, "seconds")
RATE_LIMIT_RPM = Bound(1, PG_INTEGER_MAX, "requests per minute, or none")


class AliasSettingError(ValueError):
    """An alias setting is out of range."""


@dataclass(frozen=True)
class AliasSettings:
    """How the gateway treats one alias."""

    cache_enabled: bool
    cache_ttl_s: float
    log_text: bool = True
    # Requests per minute per gateway replica; None: no limit.
    rate_limit_rpm: int | None = None
    # The semantic cache: the embedding alias that embeds questions (None: off), and the
    # cosine similarity above which an earlier answer is reused.
    semantic_cache_alias: str | None = None
    semantic_cache_threshold: float = DEFAULT_SEMANTIC_THRESHOLD

    @classmethod
    def defaults(cls, settings: Settings) -> AliasSettings:
        """What an alias without a row gets."""
        return cls(cache_enabled=settings.cache_enabled, cache_ttl_s=settings.cache_ttl_s)

    def __post_init__(self) -> None:
        problem = CACHE_TTL_S.problem("cache_ttl_s", self.cache_ttl_s) or RATE_LIMIT_RPM.problem(
            "rate_limit_rpm", self.rate_limit_rpm
        )
        if problem is not None or self.cache_ttl_s != self.cache_ttl_s:  # NaN
            raise AliasSettingError(problem or "cache_ttl_s must be a number of seconds")
        if not 0 < self.semantic_cache_threshold <= 1:
            raise AliasSettingError("the semantic cache threshold is a similarity in (0, 1]")
        if self.semantic_cache_alias is not None and not self.semantic_cache_alias.strip():
            raise AliasSettingError("the semantic cache's embedding alias is empty")


class AliasStore:
    """Reads and writes the aliases table."""

    def __init__(self, engine: Bind) -> None:
        self.engine = engine

    def all(self) -> dict[str, AliasSettings]:
        with connect(self.engine) as conn:
            rows = conn.execute(select(Alias)).mappings().all()
        return {
            r["alias"]: AliasSettings(
                cache_enabled=r["cache_enabled"],
                cache_ttl_s=r["cache_ttl_s"],
                log_text=r["log_text"],
                rate_limit_rpm=r["rate_limit_rpm"],
                semantic_cache_alias=r["semantic_cache_alias"],
                semantic_cache_threshold=r["semantic_cache_threshold"],
            )
            for r in rows
        }

    def get(self, alias: str, settings: Settings) -> AliasSettings:
        return self.all().get(alias) or AliasSettings.defaults(settings)

    def put(self, alias: str, value: AliasSettings) -> None:
        """Create or replace the alias's settings; gateways apply them within a second."""
        values = {
            "cache_enabled": value.cache_enabled,
            "cache_ttl_s": value.cache_ttl_s,
            "log_text": value.log_text,
            "rate_limit_rpm": value.rate_limit_rpm,
            "semantic_cache_alias": value.semantic_cache_alias,
            "semantic_cache_threshold": value.semantic_cache_threshold,
        }
        stmt = insert(Alias).values(alias=alias, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[Alias.alias], set_={**values, "updated_at": func.now()}
        )
        with begin(self.engine) as conn:
            if value.semantic_cache_alias is not None:
                # Refused here, with the reason, rather than silently off at the gateways.
                problem = ensure_pgvector(conn)
                if problem is not None:
                    raise AliasSettingError(f"the semantic cache cannot be turned on: {problem}")
            conn.execute(stmt)

    def delete(self, alias: str) -> bool:
        """Drop the alias's row, so it gets the defaults again; False when it had none."""
        with begin(self.engine) as conn:
            gone = conn.execute(delete(Alias).where(Alias.alias == alias).returning(Alias.alias))
            return gone.first() is not None
