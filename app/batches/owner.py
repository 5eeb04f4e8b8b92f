"""Who may see a file or a batch: the API key that created it (or everyone, for operators)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, true


@dataclass(frozen=True)
class Owner:
    """A caller: its API key id (None when the gateway runs without keys), or `everyone`
    for operators on the CLI and pages."""

    api_key_id: int | None = None
    everyone: bool = False

    def clause(self, column: Any) -> ColumnElement[bool]:
        """The WHERE clause that keeps the caller's own rows."""
        if self.everyone:
            return true()
        result: ColumnElement[bool] = column.is_not_distinct_from(self.api_key_id)
        return result


OPERATOR = Owner(everyone=True)
