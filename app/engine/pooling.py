"""How an embedding worker pools token vectors into one vector per input.

Kept free of llama_cpp so that deployments, the CLI and the pages can name the choices
without loading llama.cpp.
"""

from __future__ import annotations

from typing import Literal, get_args

# "model": what the GGUF says (`<arch>.pooling_type`); mean when it says nothing.
Pooling = Literal["model", "mean", "cls", "last"]
POOLING_CHOICES: tuple[str, ...] = get_args(Pooling)


def parse_pooling(value: str) -> Pooling:
    """A pooling name as typed (flag, page, row) -> Pooling; a clear error otherwise."""
    name = value.strip().lower()
    for choice in get_args(Pooling):
        if name == choice:
            return choice  # type: ignore[no-any-return]
    raise ValueError(f"pooling {value!r} is not one of {', '.join(POOLING_CHOICES)}")
