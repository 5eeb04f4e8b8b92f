"""Deployments: deploy models from the store, scale, stop, roll; live workers and their logs."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import streamlit as st

from app.control.accounts import Role
from app.control.deployments import (
    ContextTooLargeError,
    DeploymentError,
    DeploymentRequest,
    Deployments,
    ServingSettings,
    parse_node_labels,
)
from app.db.tables import Model
from app.engine.serving import DEFAULT_N_CTX, ServingParams, serving_field
from app.store.catalog import default_slots_for, describe_model
from app.store.estimate import format_bytes
from app.supervisor import logs
from app.ui import admin_actions, auth, changes, deployment_rows, resources, worker_health
from app.ui.serving_form import serving_form

REFRESH_S = 2.0
FLASH_KEY = "deployments_flash"

operator = auth.require_role(Role.VIEWER)
can_change = operator.role.allows(Role.OPERATOR)
st.title("Deployments")
settings = resources.settings()
admin = admin_actions.admin()
actor = admin_actions.page_actor(operator, "deployments")

with resources.database_errors():
    deployments = Deployments(resources.database().engine, resources.settings().worker_live_s)
    models = [m for m in resources.model_store().list() if m.status == "valid"]
    existing = deployments.all()
models_by_name = {m.name: m for m in models}


# The serving parameters the form shows, as rows of columns; main_gpu and tensor_split stay
# as they are (set through herd.yaml or the admin API).
FORM_ROWS = (("n_gpu_layers",), ("n_ctx", "parallel", "threads"), ("embeddings", "pooling"))


def serving_inputs(prefix: str, model: Model, current: ServingSettings | None) -> ServingSettings:
    """The llama.cpp settings widgets, with the memory estimate beside the GPU layers."""
    layers = model.block_count or 0
    trained = model.context_length or DEFAULT_N_CTX

    def start(name: str, chosen: Mapping[str, Any]) -> Any:
        if current is not None:
            return getattr(current, name)
        if name == "n_ctx":
            return min(trained, DEFAULT_N_CTX)
        if name == "parallel":
            return default_slots_for(model, chosen["n_gpu_layers"], chosen["n_ctx"])
        return serving_field(name).default

    left, right = st.columns([3, 2])
    with left:
        chosen = serving_form(
            prefix,
            FORM_ROWS,
            start,
            slider_max={"n_gpu_layers": layers},
            notes={"n_ctx": f"{model.name} was trained for {trained} tokens."},
        )
    n_gpu_layers, n_ctx = chosen["n_gpu_layers"], chosen["n_ctx"]
    # parallel 0: the worker chooses; estimate what it would choose on this host.
    slots = chosen["parallel"] or default_slots_for(model, n_gpu_layers, n_ctx)
    with right:
        estimate = describe_model(model, n_gpu_layers, n_ctx, slots)["estimate"] or {}
        st.metric("VRAM estimate", format_bytes(estimate.get("vram_bytes")))
        st.metric("RAM estimate", format_bytes(estimate.get("ram_bytes")))
        st.caption(
            f"{estimate.get('gpu_layers', 0)} of {layers} layers on the GPU and "
            f"{slots} slots of KV cache, per replica."
        )
    kept = current.serving_values() if current else ServingParams().serving_values()
    return ServingSettings(model=model.name, **{**kept, **chosen})


def overflow_confirmation(prefix: str, model: Model, n_ctx: int) -> bool:
    if model.context_length and n_ctx > model.context_length:
        return st.checkbox(
            f"Deploy with n_ctx above the trained {model.context_length} tokens anyway",
            key=f"{prefix}_overflow",
        )
    return False


def report(action: str, run: Callable[[], object]) -> None:
    changes.run_change(
        FLASH_KEY, action, run, refused=(DeploymentError,), plain=(ContextTooLargeError,)
    )


changes.show_confirmation(FLASH_KEY)


if can_change:
    with st.expander("Deploy a model", expanded=not existing):
        if not models:
            st.info("No valid model in the store; add one on the Models page.")
        else:
            name = st.selectbox("Model", list(models_by_name), key="deploy_model")
            model = models_by_name[name]
            top = st.columns(2)
            alias = top[0].text_input(
                "Alias", value=name.rsplit("/", 1)[-1].removesuffix(".gguf"), key="deploy_alias"
            )
            replicas = top[1].number_input("Replicas", min_value=0, value=1, key="deploy_replicas")
            serving = serving_inputs("deploy", model, None)
            where = st.columns(2)
            node = where[0].text_input(
                "Node (optional)",
                key="deploy_node",
                help="Run the replicas only on this machine (its HERD_NODE_NAME).",
            )
            labels = where[1].text_input(
                "Node labels (optional)",
                key="deploy_labels",
                placeholder="gpu=h100, zone=a",
                help="Run the replicas only on nodes whose HERD_NODE_LABELS include all of these.",
            )
            allow = overflow_confirmation("deploy", model, serving.n_ctx)
            if st.button("Deploy", type="primary", key="deploy_submit"):
                report(
                    "deploy",
                    lambda: admin.create_deployment(
                        actor,
                        DeploymentRequest(
                            alias,
                            serving,
                            replicas=int(replicas),
                            node=node,
                            node_labels=parse_node_labels(labels),
                            allow_ctx_overflow=allow,
                        ),
                    ),
                )


@st.fragment(run_every=REFRESH_S)
def live_status() -> None:
    """Deployments and workers, refreshed in place every REFRESH_S seconds."""
    with resources.database_errors():
        current = deployments.all()
    if not current:
        st.info("Nothing deployed yet.")
        return
    st.dataframe(
        deployment_rows.deployment_rows(current), hide_index=True, use_container_width=True
    )
    for d in current:
        if d.state == "failed":
            st.error(f"Deployment {d.id} ({d.alias}) failed: {d.error}")
    cpu_only = deployment_rows.cpu_only_workers(current)
    if cpu_only:
        st.warning(
            "This llama-cpp-python build is CPU-only: it cannot offload layers to a GPU, so "
            f"{len(cpu_only)} worker(s) asked for GPU layers run on the CPU. Rebuild it with "
            f"CUDA:\n\n`{deployment_rows.CPU_ONLY_REBUILD}`"
        )
    st.subheader("Workers")
    workers = [w for d in current for w in d.workers]
    if workers:
        reuse = worker_health.read_all_prefix_reuse(w.url for w in workers if w.is_ready and w.url)
        st.dataframe(
            deployment_rows.worker_rows(workers, reuse), hide_index=True, use_container_width=True
        )
        st.caption(
            "Slots busy: generations running now / slots. Prefix cache hits: share of the "
            "prompt tokens since the worker started that were reused from its KV cache "
            "instead of being computed again (shared system prompts, chat history)."
        )
    else:
        st.caption(
            "No workers yet; the supervisor (`herd supervisor`, part of `herd up`) starts them."
        )


st.subheader("Status")
live_status()

if existing and can_change:
    st.subheader("Change a deployment")
    by_label = {f"{d.id} · {d.alias} ({d.model_name})": d for d in existing}
    chosen = by_label[st.selectbox("Deployment", list(by_label), key="manage_deployment")]
    cols = st.columns([2, 1, 1, 1])
    new_replicas = cols[0].number_input(
        "Replicas", min_value=0, value=chosen.replicas, key=f"scale_{chosen.id}"
    )
    if cols[0].button("Scale", key=f"scale_submit_{chosen.id}"):
        report("scale", lambda: admin.scale(actor, chosen.id, int(new_replicas)))
    if chosen.state == "active":
        if cols[1].button("Stop", key=f"stop_{chosen.id}"):
            report("stop", lambda: admin.stop(actor, chosen.id))
    elif cols[1].button("Start", key=f"start_{chosen.id}"):
        report("start", lambda: admin.start(actor, chosen.id))
    confirm = cols[3].checkbox("Really delete", key=f"confirm_delete_{chosen.id}")
    if cols[2].button("Delete", key=f"delete_{chosen.id}", disabled=not confirm):
        report("delete", lambda: admin.delete_deployment(actor, chosen.id))

    with st.expander("Roll to a new model or settings (no downtime)"):
        names = list(models_by_name)
        default = names.index(chosen.model_name) if chosen.model_name in models_by_name else 0
        if names:
            roll_name = st.selectbox("Model", names, index=default, key=f"roll_model_{chosen.id}")
            roll_model = models_by_name[roll_name]
            current = dataclasses.replace(chosen.serving, model=roll_name)
            rolled = serving_inputs(f"roll_{chosen.id}", roll_model, current)
            allow_roll = overflow_confirmation(f"roll_{chosen.id}", roll_model, rolled.n_ctx)
            st.caption("New replicas start first; each old one stops only when a new one is ready.")
            if st.button("Roll", key=f"roll_submit_{chosen.id}"):
                report(
                    "roll",
                    lambda: admin.roll(actor, chosen.id, rolled, allow_ctx_overflow=allow_roll),
                )
        else:
            st.info("No valid model in the store to roll to.")


@st.fragment(run_every=REFRESH_S)
def log_tail() -> None:
    """The chosen worker's log, refreshed in place."""
    with resources.database_errors():
        workers = [w for w in deployments.workers() if w.log_path]
    if not workers:
        st.caption("No worker logs yet.")
        return
    labels = {deployment_rows.worker_label(w): w for w in workers}
    picked = labels[st.selectbox("Worker", list(labels), key="log_worker")]
    try:
        text = logs.tail(settings, picked.log_path or "")
    except logs.LogAccessError as exc:
        st.error(str(exc))
        return
    st.caption(f"`{picked.log_path}` (last {logs.DEFAULT_TAIL_BYTES // 1024} KiB)")
    st.code(text or "(empty)", language=None)


if existing:
    st.subheader("Worker logs")
    log_tail()
