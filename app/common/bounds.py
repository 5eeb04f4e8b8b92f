"""Bounds on the numbers and lengths operators and clients send, declared once beside the
value they bound (ServingParams, deployments, keys, alias settings) and checked before the
database sees the value: by pydantic in the admin API and herd.yaml (400 or file:line naming
the field), by the owning module for the pages and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

# What PostgreSQL's integer and bigint columns hold.
PG_INTEGER_MAX = 2**31 - 1
PG_BIGINT_MAX = 2**63 - 1
# Integers a JSON client (JavaScript's numbers) reads back exactly.
JSON_SAFE_MAX = 2**53 - 1


@dataclass(frozen=True)
class Bound:
    """An inclusive range: of a number's value, or of a text's or a list's length."""

    low: int | float
    high: int | float
    # What the value means, said with a refusal: "tokens; 0: the model's trained context".
    note: str = ""

    def problem(self, name: str, value: int | float | None) -> str | None:
        """Why value is out of range, as a sentence naming it; None when it is within
        (or None: unset)."""
        if value is None or self.low <= value <= self.high:
            return None
        note = f" ({self.note})" if self.note else ""
        if value < self.low:
            return f"{name} must be {self.low} or more{note}, not {value}"
        return f"{name} must be at most {self.high}{note}, not {value}"

    def length_problem(self, name: str, value: str | None) -> str | None:
        """Why a text's length is out of range; None when it is within (or None)."""
        if value is None or self.low <= len(value) <= self.high:
            return None
        if len(value) < self.low:
            return f"{name} needs at least {self.low} character(s)"
        return f"{name} is longer than {self.high} characters"

    def field(self, default: Any = ..., **kwargs: Any) -> Any:
        """A pydantic field holding a number within the range."""
        return Field(default, ge=self.low, le=self.high, **kwargs)

    def length(self, default: Any = ..., **kwargs: Any) -> Any:
        """A pydantic field holding a text (or list) whose length is within the range."""
        return Field(default, min_length=int(self.low), max_length=int(self.high), **kwargs)
