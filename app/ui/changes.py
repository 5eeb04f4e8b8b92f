"""Operator changes made from a page: run one, show a refusal plainly, and after a success
rerun the page with a one-time confirmation (so the tables below show the new state)."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from app.ui import resources


def run_change(
    flash_key: str,
    action: str,
    run: Callable[[], object],
    *,
    refused: tuple[type[Exception], ...],
    done: str = "done",
    plain: tuple[type[Exception], ...] = (),
) -> None:
    """Run a change. A `refused` error shows as "Cannot <action>: ...", a `plain` one as its
    own message (it already says what to do); success reruns with "<Action>: <done>."."""
    try:
        with resources.database_errors():
            run()
    except plain as exc:
        st.error(str(exc))
    except refused as exc:
        st.error(f"Cannot {action}: {exc}")
    else:
        st.session_state[flash_key] = f"{action.capitalize()}: {done}."
        st.rerun()


def show_confirmation(flash_key: str) -> None:
    """The confirmation a successful change left for this run, shown once."""
    if flash_key in st.session_state:
        st.success(st.session_state.pop(flash_key))
