"""The serving parameters' widgets, built from their one definition (ServingParams): each
field's label, bounds, step, choices and help come from app/engine/serving.py, so a new
parameter with a label shows up in the Deployments form without a line here."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field
from typing import Any

import streamlit as st

from app.engine.serving import serving_field

# The value a widget starts at, given the values of the widgets above it (the page's
# default for parallel slots depends on the layers and context chosen before it).
Start = Callable[[str, Mapping[str, Any]], Any]


def serving_form(
    prefix: str,
    rows: Sequence[Sequence[str]],
    start: Start,
    *,
    slider_max: Mapping[str, int] | None = None,
    notes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One widget per named field, laid out in rows of columns, keyed `{prefix}_{name}`;
    returns the chosen values as ServingParams takes them.

    slider_max: fields shown as a slider up to this value (GPU layers: the model's layers);
    notes: a sentence the page adds to a field's help (what the model was trained for)."""
    chosen: dict[str, Any] = {}
    for row in rows:
        for column, name in zip(st.columns(len(row)), row, strict=True):
            f = serving_field(name)
            with column:
                chosen[name] = _widget(
                    f,
                    f"{prefix}_{name}",
                    start(name, chosen),
                    chosen,
                    (slider_max or {}).get(name),
                    (notes or {}).get(name),
                )
    return chosen


def _widget(
    f: Field[Any],
    key: str,
    value: Any,
    chosen: Mapping[str, Any],
    slider_max: int | None,
    note: str | None,
) -> Any:
    """The widget for one field, and its value as the field holds it."""
    meta = f.metadata
    label = meta["label"]
    if label is None:
        raise ValueError(f"serving parameter {f.name} has no form label")
    help_text = meta["help"][:1].upper() + meta["help"][1:] + (f" {note}" if note else "")
    if meta["choices"] is not None:
        choices = list(meta["choices"])
        needs = meta["needs"]
        picked = st.selectbox(
            label,
            choices,
            index=choices.index(value),
            key=key,
            disabled=needs is not None and not chosen.get(needs),
            help=help_text,
        )
        return meta["parse"](str(picked)) if meta["parse"] else picked
    if f.default is False:
        return bool(st.checkbox(label, value=bool(value), key=key, help=help_text))
    bound = meta["bound"]
    if slider_max is not None:
        return int(
            st.slider(
                label,
                min_value=int(bound.low),
                max_value=max(slider_max, 0),
                value=min(int(value), slider_max),
                key=key,
                help=help_text,
            )
        )
    # A field that may be unset (threads) reads 0 as unset: its label says so.
    optional = f.default is None
    number = st.number_input(
        label,
        min_value=0 if optional else int(bound.low),
        max_value=int(bound.high),
        value=int(value or 0) if optional else int(value),
        step=meta["step"],
        key=key,
        help=help_text,
    )
    return (int(number) or None) if optional else int(number)
