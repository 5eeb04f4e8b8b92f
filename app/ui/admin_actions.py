"""What operator pages change goes through app.control, recorded as made on a page by the
logged-in operator."""

from __future__ import annotations

import streamlit as st

from app.control.accounts import LoggedIn
from app.control.audit import Actor, Via
from app.control.changes import Admin
from app.ui import resources


def admin() -> Admin:
    return Admin(resources.database().engine, resources.settings())


def client_address() -> str | None:
    """The browser's address as Streamlit sees it; None for localhost (Streamlit does not
    say) and outside a browser session."""
    address = st.context.ip_address
    return address if isinstance(address, str) else None


def page_actor(operator: LoggedIn, page: str) -> Actor:
    """The actor for changes on a page: the operator, the page ("models") as the origin,
    the browser's address as the source."""
    return Actor(who=operator.name, via=Via.PAGE, source=client_address(), origin=page)
