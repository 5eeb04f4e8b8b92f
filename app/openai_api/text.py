"""Text a request may carry: valid Unicode without NUL characters.

JSON may escape a lone UTF-16 surrogate ("\\ud800") or a NUL ("\\u0000"); Python decodes both
into a str that cannot be encoded as UTF-8 or stored in a PostgreSQL text column. Refused
where the request is read, with the field named, instead of failing deep inside.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def check_text(value: str) -> str:
    """value unchanged, or ValueError naming the first bad character and where it is."""
    found = _BAD_CHARACTER.search(value)
    if found is None:
        return value
    char = found.group()
    what = "a NUL character" if char == "\x00" else f"a lone UTF-16 surrogate (U+{ord(char):04X})"
    raise ValueError(f"contains {what} at offset {found.start()}; send valid Unicode text")


def check_json_text(value: Any) -> Any:
    """check_text on every string (keys too) inside a JSON value (tools, schemas)."""
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_text(key)
            check_json_text(item)
    elif isinstance(value, list):
        for item in value:
            check_json_text(item)
    return value


Text = Annotated[str, AfterValidator(check_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_text)]
