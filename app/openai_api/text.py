"""Text a request may carry: valid Unicode without NUL characters.

JSON may escape a lone UTF-16 surrogate ("\\ud800") or a NUL ("\\u0000"); Python decodes both
into a str that cannot be encoded as UTF-8 or stored in a PostgreSQL text column. Refused
where the request is read, with the field named, instead of failing deep inside.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator


def check_text(value: str) -> str:
    """value unchanged, or ValueError naming the first bad character and where it is.

    Runs on every string of every request at the gateway: str.find and str.encode scan in C
    (a regex over the same text cost ten times as much on long prompts).
    """
    nul = value.find("\x00")
    surrogate = -1
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            surrogate = exc.start
    if nul < 0 and surrogate < 0:
        return value
    if nul >= 0 and (surrogate < 0 or nul < surrogate):
        raise ValueError(f"contains a NUL character at offset {nul}; send valid Unicode text")
    code = ord(value[surrogate])
    raise ValueError(
        f"contains a lone UTF-16 surrogate (U+{code:04X}) at offset {surrogate}; "
        "send valid Unicode text"
    )


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


def bad_text_at(value: Any, path: str = "") -> str | None:
    """Where the first string (or object key) inside a JSON value that PostgreSQL cannot
    store is, and why: "body.messages.[0].content: contains a NUL character at offset 3; ...";
    None when every string is fine. Walks without recursion (any depth json.loads allows)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            try:
                check_text(item)
            except ValueError as exc:
                return f"{where}: {exc}" if where else str(exc)
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                inner = f"{where}.{key}" if where else str(key)
                if isinstance(key, str):
                    try:
                        check_text(key)
                    except ValueError as exc:
                        return f"{where or '(top)'}: a key {exc}"
                children.append((inner, child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(
                reversed([(f"{where}.[{i}]" if where else f"[{i}]", c) for i, c in enumerate(item)])
            )
    return None


Text = Annotated[str, AfterValidator(check_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_text)]
