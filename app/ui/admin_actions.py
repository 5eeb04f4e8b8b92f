"""What operator pages change goes through app.admin, recorded as made on a page by the
logged-in operator."""

from __future__ import annotations

from app.accounts import LoggedIn
from app.admin.audit import Actor, Via
from app.admin.changes import Admin
from app.ui import resources


def admin() -> Admin:
    return Admin(resources.database().engine, resources.settings())


def page_actor(operator: LoggedIn, page: str) -> Actor:
    """The actor for changes on a page: the operator, and the page as where it came from."""
    return Actor(who=operator.name, via=Via.PAGE, source=f"page:{page}")
