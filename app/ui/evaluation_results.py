"""The Evaluation page's results: the latest measurement of each model as a table, and the
size and speed against perplexity with their Pareto fronts."""

from __future__ import annotations

import streamlit as st

from app.evaluation.metrics import Metric
from app.evaluation.store import EvaluationStore
from app.store.estimate import format_bytes
from app.ui import resources
from app.ui.charts import PLOTLY_CONFIG
from app.ui.evaluation_charts import pareto_scatter


def evaluation_results(evaluations: EvaluationStore) -> None:
    """Each model's latest evaluation, read now (an evaluate job may just have ended)."""
    with resources.database_errors():
        results = evaluations.latest()
    if not results:
        st.info("No evaluations yet.")
        return
    table = []
    for row in results:
        table.append(
            {
                "model": row["model"],
                "type": row["file_type"],
                "size": format_bytes(row.get(Metric.SIZE.value)),
                "perplexity": row.get(Metric.PERPLEXITY.value),
                "prefill tokens/s": row.get(Metric.PREFILL.value),
                "decode tokens/s": row.get(Metric.DECODE.value),
                "peak RSS": format_bytes(row.get(Metric.RSS_PEAK.value)),
                "estimate": format_bytes(row.get(Metric.RSS_ESTIMATE.value)),
                "estimate error %": row.get(Metric.RSS_ERROR.value),
                "peak VRAM": format_bytes(row.get(Metric.VRAM_PEAK.value)),
                "VRAM estimate": format_bytes(row.get(Metric.VRAM_ESTIMATE.value)),
                "GPU layers": (row["settings"] or {}).get("n_gpu_layers"),
                "reference log-lik/token": row.get(Metric.REFERENCE_LOGLIK.value),
                "context": (row["settings"] or {}).get("n_ctx"),
                "threads": (row["settings"] or {}).get("threads"),
                "evaluated": row["evaluated_at"],
            }
        )
    st.dataframe(table, hide_index=True, width="stretch")
    contexts = {(r["settings"] or {}).get("n_ctx") for r in results}
    if len(contexts) > 1:
        measured = ", ".join(f"{n:,}" for n in sorted(c for c in contexts if c is not None))
        st.warning(f"Models were measured at different contexts ({measured} tokens); "
                   "compare perplexity only at the same one.")  # fmt: skip
    left, right = st.columns(2)
    left.plotly_chart(
        pareto_scatter(results, Metric.SIZE.value, Metric.PERPLEXITY.value,
                       title="Size vs perplexity", x_title="file size (bytes)",
                       y_title="perplexity"),
        config=PLOTLY_CONFIG, key="chart_size_ppl",
    )  # fmt: skip
    right.plotly_chart(
        pareto_scatter(results, Metric.DECODE.value, Metric.PERPLEXITY.value,
                       title="Decode speed vs perplexity", x_title="decode tokens/s",
                       y_title="perplexity", maximize_x=True),
        config=PLOTLY_CONFIG, key="chart_speed_ppl",
    )  # fmt: skip
    st.caption("Stars and the dashed line: the Pareto front (no other model is both smaller "
               "or faster and lower in perplexity).")  # fmt: skip
