"""The Models page's table: every model in the store with its metadata, validity and the
memory estimate for the page's GPU layers and context."""

from __future__ import annotations

import streamlit as st

from app.store.catalog import ModelStore, describe_model
from app.store.estimate import format_bytes
from app.ui import resources


def models_table(store: ModelStore, n_gpu_layers: int, n_ctx: int) -> None:
    """The store's models as a table, read now (a quantize job may just have added one)."""
    with resources.database_errors():
        models = store.list()
    if not models:
        st.info("The store is empty. Add a GGUF below, or run `herd models add --demo`.")
        return
    rows = []
    for model in models:
        info = describe_model(model, n_gpu_layers, n_ctx)
        estimate = info["estimate"] or {}
        rows.append(
            {
                "name": info["name"],
                "status": info["status"],
                "quantization": info["file_type"],
                "parameters (M)": round(info["parameter_count"] / 1e6, 1)
                if info["parameter_count"]
                else None,
                "size": format_bytes(info["size_bytes"]),
                "VRAM estimate": format_bytes(estimate.get("vram_bytes")),
                "RAM estimate": format_bytes(estimate.get("ram_bytes")),
                "context": info["context_length"],
                "layers": info["block_count"],
                "architecture": info["architecture"],
                "chat template": info["has_chat_template"],
                "error": info["error"],
            }
        )
    st.dataframe(rows, hide_index=True, width="stretch")
