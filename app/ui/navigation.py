"""Which pages a visitor sees: Chat and login for everyone, operator pages after login."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.control.accounts import Role
from app.ui import auth

PAGES_DIR = Path(__file__).resolve().parents[2] / "pages"


def build_navigation() -> st.navigation:  # type: ignore[valid-type]
    """The navigation for this visitor: a login page, or the operator pages."""
    operator = auth.current_operator()
    # End users need no login for the Chat page; everything else is for operators.
    chat = st.Page(PAGES_DIR / "chat.py", title="Chat", icon=":material/chat:")
    if operator is None:
        pages = {
            "": [
                st.Page(
                    PAGES_DIR / "login.py", title="Log in", icon=":material/login:", default=True
                ),
                chat,
            ]
        }
    else:
        pages = {
            "Operate": [
                st.Page(
                    PAGES_DIR / "overview.py",
                    title="Overview",
                    icon=":material/dashboard:",
                    default=True,
                ),
                st.Page(PAGES_DIR / "models.py", title="Models", icon=":material/inventory_2:"),
                st.Page(
                    PAGES_DIR / "deployments.py",
                    title="Deployments",
                    icon=":material/rocket_launch:",
                ),
                st.Page(PAGES_DIR / "routing.py", title="Routing", icon=":material/alt_route:"),
                st.Page(PAGES_DIR / "rollouts.py", title="Rollouts", icon=":material/swap_horiz:"),
                st.Page(PAGES_DIR / "batches.py", title="Batches", icon=":material/dynamic_feed:"),
            ],
            "Analyze": [
                st.Page(
                    PAGES_DIR / "monitoring.py", title="Monitoring", icon=":material/monitoring:"
                ),
                st.Page(
                    PAGES_DIR / "feedback_review.py",
                    title="Feedback review",
                    icon=":material/rate_review:",
                ),
                st.Page(PAGES_DIR / "evaluation.py", title="Evaluation", icon=":material/speed:"),
                st.Page(
                    PAGES_DIR / "retraining.py",
                    title="Retraining",
                    icon=":material/model_training:",
                ),
            ],
            "Use": [chat],
        }
        if operator.role.allows(Role.ADMIN):
            pages["Admin"] = [
                st.Page(PAGES_DIR / "users.py", title="Users", icon=":material/group:"),
                st.Page(PAGES_DIR / "audit.py", title="Audit", icon=":material/history:"),
            ]
        with st.sidebar:
            st.caption(f"Logged in as **{operator.name}** ({operator.role.value})")
            if st.button("Log out", key="logout"):
                auth.log_out()
                st.rerun()
    # Every page stays listed: Streamlit otherwise folds all but the first ten behind
    # "View more", which hid the Admin pages once the Batches page was added.
    return st.navigation(pages, expanded=True)
