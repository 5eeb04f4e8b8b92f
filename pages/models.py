"""Models: the GGUF store with metadata, validity and memory estimates; add and rescan;
quantize into new variants (as jobs) and the lineage tree."""

from functools import partial
from pathlib import Path

import streamlit as st

from app.compress.quantize import (
    QuantizeRefused,
    QuantizeRequest,
    offered_ftypes,
    parse_layers,
    start_quantize,
)
from app.control.accounts import Role
from app.jobs.kinds import JobKind
from app.store.catalog import ModelStoreError
from app.store.lineage import lineage_tree
from app.ui import admin_actions, auth, resources
from app.ui.jobs_panel import job_store, jobs_panel
from app.ui.live import follow_jobs
from app.ui.models_table import models_table

operator = auth.require_role(Role.VIEWER)
st.title("Models")
store = resources.model_store()
admin = admin_actions.admin()
actor = admin_actions.page_actor(operator, "models")
st.caption(f"Model store: `{store.root}`")

left, right = st.columns(2)
n_gpu_layers = left.number_input(
    "GPU layers for the estimate",
    min_value=-1,
    value=0,
    help="-1 offloads every layer and the output layer; 0 keeps the model in RAM.",
)
n_ctx = right.number_input("Context (tokens) for the estimate", min_value=256, value=4096, step=256)

with resources.database_errors():
    models = store.list()
# Filled at the end of the page, so a model added, rescanned or deleted below is in it; it
# refreshes itself while a quantize job runs, and once more when the job ends.
table = st.container()

if operator.role.allows(Role.OPERATOR):
    st.subheader("Add or rescan")
    with st.form("add_model"):
        source = st.text_input(
            "Path of a .gguf file on the server",
            help="It is validated, then copied into the store.",
        )
        new_name = st.text_input("Name in the store (optional)")
        add = st.form_submit_button("Add to store")
    if add:
        try:
            with st.spinner("Validating and copying ..."):
                added = admin.add_model(actor, Path(source), new_name or None)
            st.success(f"Added {added}.")
        except ModelStoreError as exc:
            st.error(str(exc))
    cols = st.columns(2)
    if cols[0].button("Rescan the store"):
        with st.spinner("Scanning ..."):
            report = admin.scan_models(actor)
        st.success(
            f"{len(report.valid)} valid, {len(report.invalid)} invalid, "
            f"{len(report.missing)} missing."
        )
    if cols[1].button("Add the SmolLM2 demo model"):
        try:
            with st.spinner("Copying the demo model ..."):
                demo = admin.add_model(actor, None, demo=True)
            st.success(f"{demo} is in the store.")
        except ModelStoreError as exc:
            st.error(str(exc))
    if models:
        with st.expander("Delete a model no deployment uses"):
            doomed = st.selectbox("Model", [m.name for m in models], key="model_delete_pick")
            sure = st.checkbox("Delete its file from the store too", key="model_delete_sure")
            if st.button("Delete", key="model_delete", disabled=not sure):
                try:
                    with resources.database_errors():
                        admin.delete_model(actor, doomed)
                except ModelStoreError as exc:
                    st.error(f"Cannot delete {doomed}: {exc}")
                else:
                    st.rerun()

if any(m.parent_id for m in models):
    st.subheader("Lineage")
    st.caption("Each model under the one it was made from, with how it was made.")
    st.dataframe([row.describe() for row in lineage_tree(models)], hide_index=True, width="stretch")

st.subheader("Quantize")
valid = [m.name for m in models if m.status == "valid"]
can_change = operator.role.allows(Role.OPERATOR)
if can_change and valid:
    with st.form("quantize"):
        source_name = st.selectbox("Source model", valid, key="quantize_source")
        types = st.multiselect(
            "File types (one job each)",
            offered_ftypes(),
            key="quantize_types",
            help="llama.cpp's quantization types; those that need an importance matrix "
            "are not offered.",
        )
        prune = st.text_input(
            "Layers to prune (optional)", key="quantize_prune", help="e.g. 3,7: dropped layers"
        )
        requantize = st.checkbox(
            "Allow requantizing an already quantized source", key="quantize_requantize"
        )
        start = st.form_submit_button("Start quantizing")
    if start:
        try:
            layers = parse_layers(prune)
            with resources.database_errors():
                ids = start_quantize(
                    resources.settings(),
                    store,
                    job_store(),
                    [QuantizeRequest(source_name, t, layers, requantize) for t in types],
                    actor,
                )
            st.success("Started " + ", ".join(f"job {i}" for i in ids) + ".")
        except (QuantizeRefused, ModelStoreError) as exc:
            st.error(f"Cannot quantize: {exc}")
elif can_change:
    st.caption("Add a model to the store to quantize it.")
jobs_panel(JobKind.QUANTIZE.value, actor if can_change else None)
with table:
    follow_jobs(JobKind.QUANTIZE.value, partial(models_table, store, int(n_gpu_layers), int(n_ctx)))
