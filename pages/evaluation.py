"""Evaluation: measure models (as a job) and compare size, speed and perplexity."""

from functools import partial

import streamlit as st

from app.control.accounts import Role
from app.evaluation.answers import AnswerStore
from app.evaluation.plan import EvalRefused, EvalRequest, start_eval
from app.evaluation.prompt_sets import FEEDBACK
from app.evaluation.store import EvaluationStore
from app.jobs.kinds import JobKind
from app.ui import auth, resources
from app.ui.admin_actions import page_actor
from app.ui.changes import show_confirmation
from app.ui.evaluation_answers import answers_side_by_side
from app.ui.evaluation_results import evaluation_results
from app.ui.jobs_panel import job_store, jobs_panel
from app.ui.live import follow_jobs
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
    evaluations = EvaluationStore(resources.database().engine)
    results = evaluations.latest()
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
follow_jobs(JobKind.EVALUATE.value, partial(evaluation_results, evaluations))

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
