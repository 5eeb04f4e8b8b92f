"""The Retraining page's Datasets section: the datasets built so far with their cleaning
reports and downloads, a form that builds one (SFT here and now; distilled or augmented as
a background `dataset` job), and those jobs with their progress."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import streamlit as st
from sqlalchemy import Engine

from app.analytics.review import known_tags
from app.config import Settings
from app.control.audit import Actor
from app.datasets.archive import zip_folder
from app.datasets.build import BuildSpec, build_dataset, datasets_root
from app.datasets.cleaning import CleaningOptions
from app.datasets.job import DatasetJobRequest, save_upload, start_dataset_job
from app.datasets.rows import DatasetError, DatasetKind
from app.datasets.selection import LogSelection, Rating, Selected, read_upload, select_from_log
from app.datasets.splits import SplitRatios
from app.datasets.store import DatasetInfo, DatasetStore
from app.datasets.teacher import GenerationSettings
from app.jobs.kinds import JobKind
from app.ui import charts
from app.ui.charts import PLOTLY_CONFIG
from app.ui.jobs_panel import jobs_panel

LOG, UPLOAD = "Request log (period above)", "Uploaded file"
# The list's choice of the dataset whose report and downloads are shown.
PICK_KEY = "dataset_pick"


def cleaning_report(info: DatasetInfo, key: str) -> None:
    """Rows removed (and rewritten) by each step: a chart and the table."""
    steps = info.steps
    fig = charts.bars(steps, "step", "removed", title="Rows removed per step", y_title="rows")
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=f"{key}_steps_chart")
    st.dataframe(
        [
            {k: s[k] for k in ("step", "rows_in", "removed", "changed", "rows_out", "description")}
            for s in steps
        ],
        hide_index=True,
        width="stretch",
        # Every step in view (35 px a row and the header): a report is read whole.
        height=35 * (len(steps) + 1) + 3,
        key=f"{key}_steps",
    )
    splits = ", ".join(f"{k} {v}" for k, v in info.split_rows.items())
    st.caption(f"{info.rows} rows ({splits}), seed {info.card.get('seed')}; files in `{info.path}`")


def _downloads(info: DatasetInfo) -> None:
    cols = list(st.columns(2))
    if info.path.is_dir():
        cols[0].download_button(
            "Download dataset (zip)",
            zip_folder(info.path),
            file_name=f"{info.name}.zip",
            mime="application/zip",
            key=f"zip_{info.name}",
        )
        card = info.path / "README.md"
        if card.exists():
            cols[1].download_button(
                "Download card",
                card.read_bytes(),
                file_name=f"{info.name}-README.md",
                key=f"card_{info.name}",
            )
    else:
        st.warning(f"The files are gone from {info.path}.")


def dataset_list(engine: Engine) -> None:
    infos = DatasetStore(engine).list()
    if not infos:
        st.caption("No datasets yet.")
        return
    st.dataframe(
        [
            {
                "name": i.name,
                "kind": i.kind,
                "rows": i.rows,
                **i.split_rows,
                "source": i.source.get("type"),
                "created": i.created_at,
                "by": i.created_by,
            }
            for i in infos
        ],
        hide_index=True,
        width="stretch",
        key="datasets_table",
    )
    by_name = {i.name: i for i in infos}
    chosen = by_name[st.selectbox("Dataset", list(by_name), key=PICK_KEY)]
    cleaning_report(chosen, "picked")
    _downloads(chosen)


def _upload(form: dict[str, Any]) -> Any:
    upload = form["upload"]
    if upload is None:
        raise DatasetError("choose a .jsonl or .csv file to upload")
    return upload


def _log_selection(start: datetime, end: datetime, form: dict[str, Any]) -> LogSelection:
    return LogSelection(
        start=start,
        end=end,
        aliases=tuple(form["aliases"]),
        rating=Rating(form["rating"]),
        tags=tuple(form["tags"]),
        include_synthetic=form["synthetic"],
        include_cut=form["cut"],
    )


def _selection(engine: Engine, start: datetime, end: datetime, form: dict[str, Any]) -> Selected:
    if form["source"] == UPLOAD:
        upload = _upload(form)
        return read_upload(upload.name, upload.getvalue())
    return select_from_log(engine, _log_selection(start, end, form))


def _start_job(
    engine: Engine,
    settings: Settings,
    actor: Actor,
    spec: BuildSpec,
    generation: GenerationSettings,
    n: int,
    start: datetime,
    end: datetime,
    form: dict[str, Any],
) -> int:
    """Queue the distillation or augmentation as a background job; its id."""
    if form["source"] == UPLOAD:
        upload = _upload(form)
        # The job runs in its own process: it reads the file from HERD_HOME, then drops it.
        path = save_upload(settings, upload.name, upload.getvalue())
        request = DatasetJobRequest(spec, generation, n, upload=path, upload_name=upload.name)
        try:
            return start_dataset_job(settings, engine, request, actor, upload_is_scratch=True)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    request = DatasetJobRequest(spec, generation, n, selection=_log_selection(start, end, form))
    return start_dataset_job(settings, engine, request, actor)


def dataset_jobs(actor: Actor | None) -> None:
    """Distillation and augmentation jobs, live: progress, log, cancel, start again (actor
    None: without the buttons)."""
    st.subheader("Dataset jobs")
    jobs_panel(JobKind.DATASET.value, actor, limit=5)


def build_form(
    engine: Engine,
    settings: Settings,
    actor: Actor,
    start: datetime,
    end: datetime,
    aliases: list[str],
) -> None:
    """The build form; on submit, builds an SFT dataset and picks it in the list (which the
    page renders after the form, with its cleaning report), or starts a distillation /
    augmentation job and returns at once."""
    with st.form("dataset_build"):
        inputs = _form_inputs(engine, aliases)
        go = st.form_submit_button("Build dataset")
    if go:
        _build(engine, settings, actor, start, end, inputs)


@dataclass(frozen=True)
class _FormInputs:
    """The build form's widgets, as read on submit (checked when the build starts)."""

    name: str
    kind: str
    # Where prompts come from and the log's filters, as _selection and the job read them.
    form: dict[str, Any]
    exact: bool
    near: bool
    redact: bool
    refusals: bool
    empty: bool
    languages: str
    max_prompt: float
    ratios: str
    seed: float
    alias: str
    n: float
    max_tokens: float
    temperature: float


def _form_inputs(engine: Engine, aliases: list[str]) -> _FormInputs:
    """The form's widgets, in rows: the dataset, its prompts, cleaning and splits, and the
    alias a distillation or augmentation calls."""
    cols = list(st.columns(3))
    name = cols[0].text_input("Name", key="ds_name")
    kind = cols[1].selectbox("Kind", [k.value for k in DatasetKind], key="ds_kind")
    source = cols[2].radio("Prompts from", [LOG, UPLOAD], key="ds_source")
    upload = st.file_uploader("JSONL or CSV file", type=["jsonl", "csv"], key="ds_upload")
    cols = list(st.columns(4))
    picked = cols[0].multiselect("Aliases (none: all)", aliases, key="ds_aliases")
    rating = cols[1].selectbox("Rating", [r.value for r in Rating], key="ds_rating")
    tags = cols[2].multiselect("Review tags (any of)", known_tags(engine), key="ds_tags")
    synthetic = cols[3].checkbox("Include synthetic traffic", key="ds_synthetic")
    cut = cols[3].checkbox(
        "Include answers cut at max tokens",
        key="ds_cut",
        help="Answers that stopped at max_tokens end mid-sentence and are left out by "
        "default (logged ones, and the teacher's or paraphraser's for distill / augment).",
    )
    cols = list(st.columns(5))
    exact = cols[0].checkbox("Exact duplicates", value=True, key="ds_exact")
    near = cols[1].checkbox("Near duplicates", value=True, key="ds_near")
    redact = cols[2].checkbox("Redact PII", value=True, key="ds_redact")
    refusals = cols[3].checkbox("Drop refusals", value=True, key="ds_refusals")
    empty = cols[4].checkbox("Drop empty answers", value=True, key="ds_empty")
    cols = list(st.columns(4))
    languages = cols[0].text_input("Languages (e.g. en,de; empty: all)", key="ds_lang")
    max_prompt = cols[1].number_input("Max prompt chars", 1, value=16_000, key="ds_maxp")
    ratios = cols[2].text_input("Train,validation,test", "0.8,0.1,0.1", key="ds_split")
    seed = cols[3].number_input("Seed", value=0, step=1, key="ds_seed")
    st.caption(
        "Distill: the alias below answers every prompt. Augment: it writes N "
        "paraphrases of each. Both run as one batch through the gateway."
    )
    cols = list(st.columns(4))
    alias = cols[0].selectbox("Teacher / paraphrasing alias", aliases or [""], key="ds_alias")
    n = cols[1].number_input("Paraphrases per prompt", 1, 20, value=3, key="ds_n")
    max_tokens = cols[2].number_input("Max tokens per answer", 1, value=256, key="ds_tokens")
    temperature = cols[3].number_input("Temperature", 0.0, 2.0, value=0.0, key="ds_temp")
    form = {"source": source, "upload": upload, "aliases": picked, "rating": rating,
            "tags": tags, "synthetic": synthetic, "cut": cut}  # fmt: skip
    return _FormInputs(
        name, kind, form, exact, near, redact, refusals, empty, languages, max_prompt,
        ratios, seed, alias, n, max_tokens, temperature,
    )  # fmt: skip


def _spec(inputs: _FormInputs, actor: Actor) -> BuildSpec:
    """The dataset the form asks for; a DatasetError when a value does not hold."""
    return BuildSpec(
        name=inputs.name.strip(),
        created_by=actor.who,
        kind=DatasetKind(inputs.kind),
        cleaning=CleaningOptions(
            exact_dedup=inputs.exact,
            near_dedup=inputs.near,
            redact=inputs.redact,
            drop_refusals=inputs.refusals,
            drop_empty_answers=inputs.empty,
            max_prompt_chars=int(inputs.max_prompt),
            languages=tuple(x.strip() for x in inputs.languages.split(",") if x.strip()),
        ),
        ratios=SplitRatios.parse(inputs.ratios),
        seed=int(inputs.seed),
    )


def _build(
    engine: Engine,
    settings: Settings,
    actor: Actor,
    start: datetime,
    end: datetime,
    inputs: _FormInputs,
) -> None:
    """What a submitted form does: build an SFT dataset now, or start the job that builds
    a distilled or augmented one; says which, or why not."""
    bar = st.progress(0.0, text="Selecting ...")

    def progress(step: str, done: int, total: int) -> None:
        bar.progress(min(done / total, 1.0) if total else 1.0, text=f"{step}: {done} / {total}")

    form = inputs.form
    try:
        spec = _spec(inputs, actor)
        if spec.kind is DatasetKind.SFT:
            root = datasets_root(settings.home_dir)
            selected = _selection(engine, start, end, form)
            info = build_dataset(engine, root, spec, selected, progress, actor)
        else:
            generation = GenerationSettings(
                inputs.alias, int(inputs.max_tokens), float(inputs.temperature),
                keep_cut=form["cut"],
            )  # fmt: skip
            n = int(inputs.n)
            job_id = _start_job(engine, settings, actor, spec, generation, n, start, end, form)
    except ValueError as exc:  # DatasetError, and the Batch API's BatchError / FileError
        bar.empty()
        st.error(str(exc))
        return
    bar.empty()
    if spec.kind is not DatasetKind.SFT:
        st.success(
            f"Started job {job_id}: the {spec.kind.value} dataset {spec.name!r} is built in the "
            "background (its batch runs through the gateway); follow it under Dataset jobs."
        )
        return
    st.success(
        f"Built dataset {info.name!r}: {info.rows} rows. It is picked in the list above, with "
        "its cleaning report and downloads."
    )
    st.session_state[PICK_KEY] = info.name
