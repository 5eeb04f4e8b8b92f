"""Login state for the dashboard; every operator page calls require_role first."""

from __future__ import annotations

import streamlit as st

from app.accounts import LoggedIn, Role
from app.ui import resources

SESSION_KEY = "herd_operator"


def current_operator() -> LoggedIn | None:
    """Who is logged in in this browser session."""
    value = st.session_state.get(SESSION_KEY)
    return value if isinstance(value, LoggedIn) else None


def log_in(name: str, password: str) -> bool:
    """Check the credentials; on success remember the operator for this session."""
    operator = resources.accounts().verify(name, password)
    if operator is None:
        return False
    st.session_state[SESSION_KEY] = operator
    return True


def log_out() -> None:
    st.session_state.pop(SESSION_KEY, None)


def require_role(role: Role) -> LoggedIn:
    """Stop the page unless an operator with at least role is logged in.

    Checked on the server for every run of the page, not only by hiding navigation links.
    """
    operator = current_operator()
    if operator is None:
        st.warning("Please log in as an operator to see this page.")
        st.stop()
        raise AssertionError("unreachable")  # st.stop() raises; this keeps type checkers sure
    if not operator.role.allows(role):
        st.error(f"This page needs the {role.value} role; you are {operator.role.value}.")
        st.stop()
    return operator
