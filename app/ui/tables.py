"""Values as a person reads them: in tables (ids as their text, bytes as hex) and in
sentences (lists and mappings as words, never a repr).

Arrow has no column type for a UUID, so st.dataframe shows one as a dump of its bytes
(`{"0":208,"1":150,...}`); a table of the dashboard passes its rows through `readable`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any


def readable_value(value: Any) -> Any:
    """value as a table cell: a UUID as its canonical text, bytes as hex, the rest as is."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def readable(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """rows with every cell made readable (see readable_value)."""
    return [{key: readable_value(value) for key, value in row.items()} for row in rows]


def plain(value: Any) -> str:
    """value in words: lists joined with commas, mappings as "key value" pairs, numbers
    without float noise."""
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {plain(item)}" for key, item in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(plain(item) for item in value)
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
