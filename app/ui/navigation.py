"""Which pages a visitor sees: operator pages only after login."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.ui import auth

PAGES_DIR = Path(__file__).resolve().parents[2] / "pages"


def build_navigation() -> st.navigation:  # type: ignore[valid-type]
    """The navigation for this visitor: a login page, or the operator pages."""
    operator = auth.current_operator()
    if operator is None:
        pages = {
            "": [
                st.Page(
                    PAGES_DIR / "login.py", title="Log in", icon=":material/login:", default=True
                )
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
                st.Page(
                    PAGES_DIR / "retraining.py",
                    title="Retraining",
                    icon=":material/model_training:",
                ),
            ],
        }
        with st.sidebar:
            st.caption(f"Logged in as **{operator.name}** ({operator.role.value})")
            if st.button("Log out", key="logout"):
                auth.log_out()
                st.rerun()
    return st.navigation(pages)
