"""Evaluation: measure models (as a job) and compare size, speed and perplexity."""

import streamlit as st

from app.accounts import Role
from app.evaluation.answers import AnswerStore
from app.evaluation.metrics import Metric
from app.evaluation.plan import EvalRefused, EvalRequest, start_eval
from app.evaluation.prompt_sets import FEEDBACK
from app.evaluation.store import EvaluationStore
from app.jobs.kinds import JobKind
from app.store.estimate import format_bytes
from app.ui import auth, resources
from app.ui.admin_actions import page_actor
from app.ui.changes import show_confirmation
from app.ui.charts import PLOTLY_CONFIG
from app.ui.evaluation_answers import answers_side_by_side
from app.ui.evaluation_charts import pareto_scatter
from app.ui.jobs_panel import job_store, jobs_panel
from app.ui.rollout_widgets import FLASH, rollouts, start_canary

# Prompts shown side by side: the newest answered, enough to read, few enough to load fast.
ANSWERS_SHOWN = 20

operator = auth.require_role(Role.VIEWER)
st.title("Evaluation")
st.caption(
    "Each model measured on this machine with the same threads and context: file size, peak "
    "RSS next to Herd's estimate, prefill/decode tokens/s (like llama-bench pp/tg), and "
    "perplexity over an evaluation text (windows of the context size, second half scored, "
    "as llama-perplexity does)."
)
show_confirmation(FLASH)
settings = resources.settings()
store = resources.model_store()
with resources.database_errors():
    answer_store = AnswerStore(resources.database().engine)
    models = [m for m in store.list() if m.status == "valid"]
    results = EvaluationStore(resources.database().engine).latest()
    prompt_sets = answer_store.prompt_sets()

can_change = operator.role.allows(Role.OPERATOR)
if can_change and models:
    with st.form("evaluate"):
        chosen = st.multiselect("Models", [m.name for m in models], key="eval_models")
        cols = st.columns(4)
        n_ctx = cols[0].number_input("Context (tokens)", min_value=16, value=512, key="eval_ctx")
        threads = cols[1].number_input("Threads (0: all)", min_value=0, value=0, key="eval_threads")
        gpu_layers = cols[2].number_input(
            "GPU layers (-1: all)", min_value=-1, value=0, key="eval_gpu_layers",
            help="0 measures on the CPU; with layers offloaded, peak VRAM is measured too.",
        )  # fmt: skip
        text_path = cols[3].text_input(
            "Evaluation text on the server (optional)", key="eval_text",
            help="UTF-8 text; default: the text shipped with Herd (about 3,800 tokens).",
        )  # fmt: skip
        cols = st.columns(3)
        prompts = cols[0].text_input(
            "Prompt set", key="eval_prompts", placeholder=FEEDBACK,
            help="'feedback': thumbs-up and corrected answers as references (the default), "
            "or the path of a JSONL file on the server, one {prompt, reference} a line.",
        )  # fmt: skip
        answers = cols[1].number_input(
            "Prompts answered greedily", min_value=0, key="eval_answers",
            value=settings.eval_answer_prompts,
        )  # fmt: skip
        answer_tokens = cols[2].number_input(
            "Most tokens per answer", min_value=1, key="eval_answer_tokens",
            value=settings.eval_answer_tokens,
        )  # fmt: skip
        start = st.form_submit_button("Evaluate")
    if start:
        request = EvalRequest(
            tuple(chosen), text_path or None, int(n_ctx), int(threads) or None,
            n_gpu_layers=int(gpu_layers), prompts=prompts.strip() or None, answers=int(answers),
            answer_tokens=int(answer_tokens),
        )  # fmt: skip
        try:
            with resources.database_errors():
                job_id = start_eval(settings, store, job_store(), request,
                                    page_actor(operator, "evaluation"))  # fmt: skip
            st.success(f"Started job {job_id}.")
        except EvalRefused as exc:
            st.error(f"Cannot evaluate: {exc}")
jobs_panel(
    JobKind.EVALUATE.value, page_actor(operator, "evaluation") if can_change else None, limit=5
)

st.subheader("Results")
if not results:
    st.info("No evaluations yet.")
else:
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
        st.warning(f"Models were measured at different contexts {sorted(contexts)}; "
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

st.subheader("Answers side by side")
st.caption(
    "The answer each model generated greedily (always the most likely token) to the first "
    "prompts of the prompt set, beside the reference answer."
)
if not prompt_sets:
    st.info("No answers yet: evaluate models with a prompt set (feedback or a file).")
else:
    chosen_set = st.selectbox("Prompt set", prompt_sets, key="answers_set")
    with resources.database_errors():
        entries = answer_store.side_by_side(str(chosen_set), limit=ANSWERS_SHOWN)
    answered = sorted({m for e in entries for m in e.answers})
    compared = st.multiselect("Models", answered, default=answered[:4], key="answers_models")
    answers_side_by_side(entries, list(compared))

if can_change and results:
    st.subheader("Canary")
    st.caption(
        "Serve an evaluated model beside an alias's current version at a share of its "
        "traffic. The rollout record cites the latest evaluation of the canary and of the "
        "current models; promote or roll it back on the Rollouts page."
    )
    manager = rollouts("evaluation")
    with resources.database_errors():
        aliases = sorted({d.alias for d in manager.deployments.all()})
    if not aliases:
        st.info("No alias is deployed yet: deploy a model on the Deployments page first.")
    else:
        with st.form("eval_canary"):
            cols = st.columns(3)
            canary_model = cols[0].selectbox(
                "Evaluated model", [r["model"] for r in results], key="eval_canary_model"
            )
            canary_alias = cols[1].selectbox("Alias", aliases, key="eval_canary_alias")
            percent = cols[2].number_input(
                "Share of traffic (%)", min_value=1, max_value=99, value=20,
                key="eval_canary_percent",
            )  # fmt: skip
            note = st.text_input("Note (why)", key="eval_canary_note")
            if st.form_submit_button("Start canary"):
                start_canary(manager, str(canary_alias), str(canary_model), float(percent),
                             operator.name, note=note, page="evaluation")  # fmt: skip
