"""Retraining: signals and a recommendation per model version, decisions, dataset export."""

from datetime import UTC, datetime, timedelta
from functools import partial

import streamlit as st

from app.analytics.decisions import record_decision
from app.analytics.export import DatasetKind, ExportError, ExportFilter, export_dataset
from app.analytics.recommend import Action, period_label
from app.analytics.scope import Scope
from app.control.accounts import Role
from app.jobs.kinds import JobKind
from app.ui import admin_actions, auth, charts, dataset_widgets, reads, resources
from app.ui.analytics_widgets import chart, class_picker, period_picker, uncounted_note
from app.ui.live import follow_jobs
from app.ui.rollout_widgets import execute_rollback_button

operator = auth.require_role(Role.VIEWER)
can_act = operator.role.allows(Role.OPERATOR)
actor = admin_actions.page_actor(operator, "retraining")
st.title("Retraining")
st.caption("Each version's period is compared with the period of equal length before it.")

start, end = period_picker("rt", default="Last 3 days")
scope = Scope(start=start, end=end, classes=class_picker("rt"))
with resources.database_errors():
    engine = resources.database().engine
    reads.prefetch(
        (reads.assess_versions, (scope,)),
        (reads.requests_by_class, (scope,)),
        (reads.list_decisions, ()),
        (reads.filter_options, ()),
    )
    assessments = reads.assess_versions(scope)
    uncounted_note(scope)

if not assessments:
    st.info("No model version has traffic in this period.")

STYLE = {Action.ROLLBACK: st.error, Action.RETRAIN: st.warning, Action.KEEP: st.success,
         None: st.info}  # fmt: skip
for i, a in enumerate(assessments):
    rec = a.recommendation
    st.subheader(a.version.label)
    STYLE[rec.action](f"Recommendation: **{rec.verdict}**")
    st.markdown("\n".join(f"- {reason}" for reason in rec.reasons))
    with st.expander("Signals and evidence"):
        st.dataframe(
            [{"signal": s.kind.value, "fired": s.fired, "why": s.summary} for s in a.signals],
            hide_index=True,
            width="stretch",
        )
        if a.complaints and a.complaints.examples:
            st.write("Example conversations for the most frequent complaint term:")
            for ex in a.complaints.examples:
                st.write(f"- *{ex['comment']}* | answer: {ex['response'] or '(not logged)'}")
    if can_act:
        with st.form(f"decide_{i}"):
            options = [x.value for x in Action]
            decision = st.selectbox(
                "Decision", options, index=options.index((rec.action or Action.KEEP).value),
                key=f"dec_{i}",
            )  # fmt: skip
            note = st.text_input("Note", key=f"note_{i}")
            if st.form_submit_button("Record decision"):
                record_decision(
                    engine,
                    model_id=a.version.model_id,
                    alias=a.version.alias,
                    decision=decision,
                    decided_by=operator.name,
                    period_start=scope.start,
                    period_end=scope.end,
                    note=note,
                    recommendation=rec.action,
                    signals=a.signals_json(),
                )
                reads.list_decisions.clear()  # listed below in this same run
                st.success("Decision recorded.")

st.header("Past decisions")
with resources.database_errors():
    decisions = reads.list_decisions()
if not decisions:
    st.caption("No decisions recorded yet.")
else:
    st.dataframe(
        [{k: v for k, v in d.items() if k != "signals"} for d in decisions],
        hide_index=True,
        width="stretch",
    )
    labels = {
        f"#{d['id']} {d['decision']} {d['model'] or '-'} "
        f"({period_label(d['period_start'], d['period_end'])})": d
        for d in decisions
    }
    chosen = labels[st.selectbox("Show the data a decision was based on", list(labels))]
    if can_act and chosen["decision"] == "rollback" and chosen["alias"]:
        execute_rollback_button(chosen["alias"], chosen["id"], operator.name)
    basis = Scope(
        start=chosen["period_start"], end=chosen["period_end"], model_id=chosen["model_id"]
    )
    with resources.database_errors():
        latency = reads.latency_series(basis)
        engagement = reads.engagement_series(basis)
    left, right = st.columns(2)
    with left:
        fig = charts.lines(
            latency, {"p95": "total_p95_ms"}, title="p95 latency", y_title="ms",
            grid=charts.series_grid(basis),
        )  # fmt: skip
        chart(fig, latency, "decision_latency")
    with right:
        fig = charts.band(
            engagement,
            "thumbs_up_ratio",
            "thumbs_up_low",
            "thumbs_up_high",
            title="Thumbs-up ratio",
            y_title="",
            grid=charts.engagement_grid(basis),
        )
        chart(fig, engagement, "decision_thumbs_up")

st.header("Datasets")
st.caption("Cleaned, split training sets under HERD_HOME/datasets (also `herd dataset ...`).")
# Filled after the build form, so a dataset built below is listed; it refreshes itself
# while a distill or augment job runs, and once more when the job ends.
listing = st.container()
with resources.database_errors():
    if can_act:
        dataset_widgets.build_form(
            engine, resources.settings(), actor, start, end, reads.filter_options().aliases
        )
with listing:
    follow_jobs(JobKind.DATASET.value, partial(dataset_widgets.dataset_list, engine))
dataset_widgets.dataset_jobs(actor if can_act else None)

st.header("Dataset export")
if not can_act:
    st.caption("Exporting datasets needs the operator role.")
    st.stop()
with resources.database_errors():
    models = {name: model_id for model_id, name in reads.filter_options().models.items()}
with st.form("export"):
    cols = st.columns(3)
    kind = cols[0].selectbox("Kind", [k.value for k in DatasetKind])
    picked = cols[1].multiselect("Models (none: all)", list(models))
    days = cols[2].number_input("Requests of the last days", min_value=1, value=30)
    cols = st.columns(3)
    min_rating = cols[0].number_input("SFT: least net rating", min_value=1, value=1)
    synthetic = cols[1].checkbox("Include synthetic (demo) traffic")
    redact = cols[2].checkbox("Redact emails, phones, card numbers", value=True)
    go = st.form_submit_button("Export")
if go:
    now = datetime.now(UTC)
    target = resources.settings().home_dir / "exports" / f"{kind}-{now:%Y%m%d-%H%M%S}.jsonl"
    bar = st.progress(0.0, text="Exporting ...")
    try:
        result = export_dataset(
            engine,
            DatasetKind(kind),
            target,
            ExportFilter(
                start=now - timedelta(days=int(days)),
                model_ids=tuple(models[name] for name in picked),
                min_rating=int(min_rating),
                include_synthetic=synthetic,
                redact=redact,
            ),
            progress=lambda done, total: bar.progress(
                done / total if total else 1.0, text=f"{done} / {total} rows"
            ),
        )
    except ExportError as exc:
        st.error(str(exc))
        st.stop()
    st.success(
        f"Wrote {result.records} records ({result.duplicates} duplicates removed) to "
        f"`{result.path}`; card `{result.card_path}`."
    )
    st.download_button("Download JSONL", result.path.read_bytes(), file_name=result.path.name)
    st.download_button(
        "Download dataset card", result.card_path.read_bytes(), file_name=result.card_path.name
    )
