"""Login state for the dashboard; every operator page calls require_role first."""

from __future__ import annotations

import dataclasses
import time

import streamlit as st
from sqlalchemy.exc import OperationalError

from app.control.accounts import LoggedIn, Role
from app.db.embedded import EmbeddedDatabaseError
from app.ui import resources

SESSION_KEY = "herd_operator"
EXPIRED_KEY = "herd_session_expired"
DISABLED_KEY = "herd_account_disabled"


def current_operator() -> LoggedIn | None:
    """Who is logged in in this browser session; None once the login is older than
    HERD_SESSION_TTL_S (checked on the server at every run)."""
    value = st.session_state.get(SESSION_KEY)
    if not isinstance(value, LoggedIn):
        return None
    if time.time() - value.logged_in_at > resources.settings().session_ttl_s:
        st.session_state.pop(SESSION_KEY, None)
        st.session_state[EXPIRED_KEY] = True
        return None
    try:
        role = resources.accounts().current(value.name)
    except (OperationalError, EmbeddedDatabaseError):
        # The database is away: keep the login; the page says the database is unavailable.
        return value
    if role is None:
        # Disabled (or removed) by an admin: the login ends at this run of any page.
        st.session_state.pop(SESSION_KEY, None)
        st.session_state[DISABLED_KEY] = True
        return None
    if role != value.role:
        value = dataclasses.replace(value, role=role)
        st.session_state[SESSION_KEY] = value
    return value


def log_in(name: str, password: str) -> bool:
    """Check the credentials; on success remember the operator for this session.

    Raises LoginLockedError while the name is locked after too many failures."""
    operator = resources.accounts().verify(name, password)
    if operator is None:
        return False
    st.session_state[SESSION_KEY] = operator
    st.session_state.pop(EXPIRED_KEY, None)
    st.session_state.pop(DISABLED_KEY, None)
    return True


def account_disabled() -> bool:
    """Did this browser's login just end because an admin disabled the account?"""
    return bool(st.session_state.get(DISABLED_KEY))


def session_expired() -> bool:
    """Did this browser's login just expire (so the login page can say so)?"""
    return bool(st.session_state.get(EXPIRED_KEY))


def log_out() -> None:
    st.session_state.pop(SESSION_KEY, None)


def require_role(role: Role) -> LoggedIn:
    """Stop the page unless an operator with at least role is logged in.

    Checked on the server for every run of the page, not only by hiding navigation links.
    """
    operator = current_operator()
    if operator is None:
        if account_disabled():
            st.warning("Your account has been disabled; ask an admin.")
        elif session_expired():
            st.warning("Your session has expired. Please log in again.")
        else:
            st.warning("Please log in as an operator to see this page.")
        st.stop()
        raise AssertionError("unreachable")  # st.stop() raises; this keeps type checkers sure
    if not operator.role.allows(role):
        st.error(f"This page needs the {role.value} role; you are {operator.role.value}.")
        st.stop()
    return operator
