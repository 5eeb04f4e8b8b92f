"""Batches: submit a JSONL file of requests, follow each batch, cancel, download results."""

import io

import streamlit as st

from app.batches.jsonl import ENDPOINTS, with_alias
from app.batches.service import create_batch_from_file
from app.control.accounts import Role
from app.ui import auth, resources
from app.ui.admin_actions import page_actor
from app.ui.batches_panel import batches_panel

operator = auth.require_role(Role.VIEWER)
actor = page_actor(operator, "batches")
st.title("Batches")
st.caption(
    "Offline work on the same fleet, as OpenAI's Batch API runs it: one request per JSONL "
    'line (`{"custom_id", "method": "POST", "url", "body"}`), sent through the gateway as '
    "batch traffic (marked in the request log, left out of engagement metrics), resumed "
    "where it was after any fault. The same batches are at `/v1/batches` and `herd batch`."
)

can_change = operator.role.allows(Role.OPERATOR)
if can_change:
    with st.form("batch_submit", clear_on_submit=True):
        upload = st.file_uploader("Batch file (JSONL)", type=["jsonl", "json", "txt"])
        cols = st.columns(2)
        alias = cols[0].text_input(
            "Alias (optional)", key="batch_alias",
            help="Send every line to this model alias instead of the one its body names.",
        )  # fmt: skip
        endpoint = cols[1].selectbox("Endpoint", ENDPOINTS, key="batch_endpoint")
        submitted = st.form_submit_button("Submit batch")
    if submitted:
        if upload is None:
            st.error("Choose a JSONL file first.")
        else:
            data = upload.getvalue()
            if alias.strip():
                data = with_alias(data, alias.strip())
            try:
                with resources.database_errors():
                    batch_id = create_batch_from_file(
                        resources.settings(), resources.database().engine, io.BytesIO(data),
                        filename=upload.name, endpoint=endpoint, created_by=operator.name,
                        actor=actor,
                    )  # fmt: skip
                st.success(f"Submitted {batch_id}.")
            except ValueError as exc:
                st.error(f"Cannot submit: {exc}")

st.subheader("Batches")
batches_panel(actor if can_change else None)
