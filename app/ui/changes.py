"""Operator changes made from a page: ask before a weighty one, run it, show a refusal
plainly, and after a success rerun the page with a one-time confirmation (so the tables
below show the new state)."""

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
        st.session_state[flash_key] = f"{sentence_case(action)}: {done}."
        st.rerun()


def sentence_case(text: str) -> str:
    """text with its first letter upper-case and the rest as written (str.capitalize would
    lower-case a model's name)."""
    return text[:1].upper() + text[1:]


def confirmed(key: str, label: str, question: str, *, confirm: str) -> bool:
    """A button that asks first: a click shows `question` with `confirm` and Cancel; True in
    the run where `confirm` is clicked."""
    asking = f"{key}_asking"
    if st.button(label, key=key):
        st.session_state[asking] = True
    if not st.session_state.get(asking):
        return False
    st.warning(question)
    yes, no = st.columns(2)
    if yes.button(confirm, key=f"{key}_confirm", type="primary"):
        del st.session_state[asking]
        return True
    if no.button("Cancel", key=f"{key}_cancel"):
        del st.session_state[asking]
        st.rerun()
    return False


def show_confirmation(flash_key: str) -> None:
    """The confirmation a successful change left for this run, shown once."""
    if flash_key in st.session_state:
        st.success(st.session_state.pop(flash_key))
