"""Overview: database, models and workers at a glance."""

import streamlit as st

from app.analytics.overview import restart_table
from app.control.accounts import Role
from app.ui import auth, reads, resources

auth.require_role(Role.VIEWER)
st.title("Overview")

with resources.database_errors():
    db = resources.database()
    summary = reads.fleet_summary(resources.settings().worker_live_s)
    restarts = reads.process_restarts()

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

st.subheader("Restarts")
if restarts:
    st.dataframe(restart_table(restarts), hide_index=True)
else:
    st.caption("herd up has restarted nothing: every process it runs has stayed up.")
for row in restarts:
    if row.failing_since is not None:
        st.warning(
            f"{row.process} on {row.host} keeps crashing (since "
            f"{row.failing_since:%Y-%m-%d %H:%M:%S %Z}); herd up keeps trying. "
            f"Its log: {row.log_path}"
        )

st.subheader("Database")
where = "embedded PostgreSQL" if db.is_embedded else "external PostgreSQL (HERD_DATABASE_URL)"
st.write(f"{where}, server version {summary.server_version}.")
st.caption("For SQL analytics, connect with the URL printed by `herd db url`.")
