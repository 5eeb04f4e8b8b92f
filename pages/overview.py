"""Overview: database, models and workers at a glance."""

import streamlit as st

from app.accounts import Role
from app.analytics.overview import fleet_summary
from app.ui import auth, resources

auth.require_role(Role.VIEWER)
st.title("Overview")

with resources.database_errors():
    db = resources.database()
    summary = fleet_summary(db.engine, resources.settings().worker_live_s)

cols = st.columns(4)
cols[0].metric("Models", summary.models_valid, help="Valid GGUF files in the model store")
cols[1].metric("Deployments", summary.deployments_active, help="Active deployments")
cols[2].metric(
    "Workers ready",
    f"{summary.workers_ready} / {summary.workers_total}",
    help="Workers with a fresh heartbeat / all registered workers",
)
cols[3].metric("Requests (24 h)", summary.requests_24h, help=f"Feedback: {summary.feedback_24h}")

if summary.models_invalid or summary.models_missing:
    st.warning(
        f"{summary.models_invalid} invalid and {summary.models_missing} missing model file(s): "
        "see the Models page."
    )

st.subheader("Database")
where = "embedded PostgreSQL" if db.is_embedded else "external PostgreSQL (HERD_DATABASE_URL)"
st.write(f"{where}, server version {summary.server_version}.")
st.caption("For SQL analytics, connect with the URL printed by `herd db url`.")
