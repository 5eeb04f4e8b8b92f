"""One definition of a training row (app/analytics/eligible.py), on real PostgreSQL rows:
the predicate and the per-reason breakdown agree for every option; datasets, `herd export`
and evaluation references all leave out batch lines, demo traffic, cancelled, failed and
cut answers, and say how many."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.analytics.eligible import ELIGIBLE, EXCLUDED_BY, REASONS, Eligibility, breakdown
from app.analytics.export import DatasetKind, ExportFilter, export_dataset, read_card
from app.analytics.review import save_correction
from app.analytics.traffic import TrafficClass
from app.control.accounts import Role
from app.datasets.build import BuildSpec, build_dataset
from app.datasets.cleaning import CleaningOptions
from app.datasets.selection import LogSelection, select_from_log
from app.datasets.splits import SplitRatios
from app.datasets.store import DatasetStore
from app.db.database import Database
from app.evaluation.references import reference_set
from tests.conftest import run_herd, run_page
from tests.test_datasets import T0, Log

# Each kind of logged row, with the reason it is left out (None: a real user turn).
KINDS: dict[str, tuple[dict[str, Any], str | None]] = {
    "live": ({"finish_reason": "stop"}, None),
    "live_unknown_finish": ({}, None),  # logged before finish_reason was: kept
    "tool_calls": ({"finish_reason": "tool_calls"}, None),
    "batch": ({"batch_id": "batch_1", "finish_reason": "stop"}, "batch"),
    "batch_cut": ({"batch_id": "batch_1", "finish_reason": "length"}, "batch"),
    "synthetic": ({"synthetic": True, "finish_reason": "stop"}, "synthetic"),
    "synthetic_cut": ({"synthetic": True, "finish_reason": "length"}, "synthetic"),
    "cancelled": ({"status": "cancelled", "http_status": 499}, "cancelled"),
    "error": ({"status": "error", "http_status": 502}, "error"),
    "rejected": ({"status": "rejected", "http_status": 429}, "error"),
    "cut": ({"finish_reason": "length"}, "cut"),
}
FROM_ALL = "FROM requests r"


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _log_kinds(log: Log, votes: tuple[int, ...] = ()) -> dict[str, uuid.UUID]:
    return {
        kind: log.add(_user(f"question of {kind}?"), f"answer of {kind}.", votes, **values)
        for kind, (values, _) in KINDS.items()
    }


def _ids(engine: Engine, where: str, options: Eligibility) -> set[uuid.UUID]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT r.id {FROM_ALL} WHERE {where}"), options.params())
        return set(rows.scalars())


def test_predicate_and_breakdown_agree_for_every_option(database: Database) -> None:
    ids = _log_kinds(Log(database.engine))
    kind_of = {v: k for k, v in ids.items()}
    assert {c.value for c in TrafficClass} - {"live"} <= set(REASONS)
    for synthetic, cut in itertools.product((False, True), repeat=2):
        options = Eligibility(include_synthetic=synthetic, include_cut=cut)
        expected: dict[str, str | None] = {}
        for kind, (_, reason) in KINDS.items():
            if synthetic and reason == "synthetic":
                reason = "cut" if kind == "synthetic_cut" and not cut else None
            if cut and reason == "cut":
                reason = None
            expected[kind] = reason
        eligible = {kind_of[i] for i in _ids(database.engine, ELIGIBLE, options)}
        assert eligible == {k for k, r in expected.items() if r is None}, options
        # The breakdown names the same rows' reasons, the first rule that applies.
        unnamed = {kind_of[i] for i in _ids(database.engine, f"{EXCLUDED_BY} IS NULL", options)}
        assert unnamed == eligible
        counts = breakdown(database.engine, FROM_ALL, options.params())
        assert counts.matched == len(KINDS) and counts.eligible == len(eligible)
        for reason, n in counts.excluded.items():
            assert n == sum(r == reason for r in expected.values()), (options, reason)
        # A reason the selection asked to include is not in force, so not listed.
        assert ("synthetic" in counts.excluded) is not synthetic
        assert ("cut" in counts.excluded) is not cut


def test_dataset_leaves_out_what_is_no_user_turn_and_its_card_says_why(
    database: Database, tmp_path: Path
) -> None:
    log = Log(database.engine)
    ids = _log_kinds(log)
    cleaning, ratios = CleaningOptions(near_dedup=False), SplitRatios(1, 0, 0)
    spec = BuildSpec("real-turns", "olivia", cleaning=cleaning, ratios=ratios)
    selected = select_from_log(database.engine, LogSelection())
    info = build_dataset(database.engine, tmp_path, spec, selected)
    lines = (tmp_path / "real-turns" / "train.jsonl").read_text().splitlines()
    assert {json.loads(x)["id"] for x in lines} == {
        str(ids[k]) for k in ("live", "live_unknown_finish", "tool_calls")
    }
    excluded = {"batch": 2, "synthetic": 2, "cancelled": 1, "error": 2, "cut": 1}
    assert info.card["excluded"] == excluded
    steps = {s["step"]: (s["rows_in"], s["removed"]) for s in info.steps}
    assert steps["excluded_batch"] == (len(KINDS), 2)
    assert steps["excluded_cut"] == (len(KINDS) - 7, 1)
    assert info.steps[0]["rows_in"] == len(KINDS)  # the steps chain from every matched row
    for before, after in itertools.pairwise(info.steps):
        assert after["rows_in"] == before["rows_out"]
    readme = (tmp_path / "real-turns" / "README.md").read_text()
    assert "left out as no real user turn: 2 batch, 2 synthetic, 1 cancelled, 2 error, 1 cut" in (
        readme
    )
    # Cut answers and demo traffic on request: no step for what was asked for.
    more = select_from_log(database.engine, LogSelection(include_cut=True, include_synthetic=True))
    assert more.excluded is not None
    assert more.excluded.excluded == {"batch": 2, "cancelled": 1, "error": 2}
    assert {r.id for r in more.rows} == {
        str(ids[k])
        for k in ("live", "live_unknown_finish", "tool_calls", "synthetic", "synthetic_cut", "cut")
    }
    # A limit: the rows past it are a step of their own.
    limited = select_from_log(database.engine, LogSelection(limit=2))
    spec = BuildSpec("lim", "o", ratios=SplitRatios(1, 0, 0))
    info = build_dataset(database.engine, tmp_path, spec, limited)
    assert [s["removed"] for s in info.steps if s["step"] == "limit"] == [1]


def test_the_cli_takes_include_cut(database: Database, herd_env: dict[str, str]) -> None:
    ids = _log_kinds(Log(database.engine))
    argv = ["dataset", "build", "with-cut", "--split", "1,0,0", "--no-near-dedup"]
    run = run_herd(*argv, "--include-cut", env=herd_env)
    assert run.returncode == 0, run.stderr
    assert "excluded_batch" in run.stdout and "excluded_cut" not in run.stdout
    shown = json.loads(run_herd("dataset", "show", "with-cut", "--json", env=herd_env).stdout)
    assert shown["source"]["include_cut"] is True and "cut" not in shown["excluded"]
    path = Path(herd_env["HERD_HOME"]) / "datasets" / "with-cut" / "train.jsonl"
    written = {json.loads(x)["id"] for x in path.read_text().splitlines()}
    assert str(ids["cut"]) in written and str(ids["cancelled"]) not in written


def test_export_and_references_use_the_same_predicate(database: Database, tmp_path: Path) -> None:
    log = Log(database.engine)
    _log_kinds(log, votes=(1,))
    real = {"live", "live_unknown_finish", "tool_calls"}
    # Corrections of thumbs-down answers: of a real turn (a preference pair, a reference),
    # and of a cancelled one (neither).
    wrong = log.add(_user("capital of France?"), "Lyon.", (-1,), finish_reason="stop")
    save_correction(database.engine, wrong, "Paris.", "ops")
    half = log.add(_user("capital of Spain?"), "Mad", (-1,), status="cancelled")
    save_correction(database.engine, half, "Madrid.", "ops")

    out = tmp_path / "sft.jsonl"
    result = export_dataset(database.engine, DatasetKind.SFT, out, ExportFilter(redact=False))
    answers = {json.loads(x)["messages"][-1]["content"] for x in out.read_text().splitlines()}
    assert answers == {f"answer of {k}." for k in real}
    card = read_card(result.card_path)
    assert card["excluded"] == {"batch": 2, "synthetic": 2, "cancelled": 1, "error": 2, "cut": 1}
    assert "left out as no real user turn: 2 batch, 2 synthetic" in result.card_path.read_text()
    with_cut = ExportFilter(include_cut=True, redact=False)
    export_dataset(database.engine, DatasetKind.SFT, out, with_cut)
    assert len(out.read_text().splitlines()) == len(real) + 1

    pairs = tmp_path / "pref.jsonl"
    export_dataset(database.engine, DatasetKind.PREFERENCE, pairs, ExportFilter(redact=False))
    [pair] = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == ("Paris.", "Lyon.")

    references = reference_set(database.engine)
    assert {r.answer for r in references} == {f"answer of {k}." for k in real} | {"Paris."}


def test_the_page_form_takes_include_cut(dashboard_env: None, database: Database) -> None:
    now = datetime.now(UTC)
    log = Log(database.engine)
    log.minute = -30  # within the page's default period
    ids = _log_kinds(log)
    with database.engine.begin() as conn:
        conn.execute(
            text("UPDATE requests SET created_at = :now + (created_at - :t0)"),
            {"now": now, "t0": T0},
        )
    app = run_page("retraining.py", Role.OPERATOR)
    app.text_input(key="ds_name").input("page-cut")
    app.text_input(key="ds_split").input("1,0,0")
    app.checkbox(key="ds_near").uncheck()
    app.checkbox(key="ds_cut").check()
    app.button(key="FormSubmitter:dataset_build-Build dataset").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    assert any("Built dataset 'page-cut': 4 rows." in s.value for s in app.success)
    [report] = [d.value for d in app.dataframe if "step" in d.value.columns]
    removed = dict(zip(report["step"], report["removed"], strict=True))
    assert removed["excluded_batch"] == 2 and removed["excluded_cancelled"] == 1
    assert "excluded_cut" not in removed
    info = DatasetStore(database.engine).get("page-cut")
    assert info is not None and info.source["include_cut"] is True
    assert str(ids["cut"]) in {json.loads(x)["id"] for x in _train_lines(info.path)}


def _train_lines(path: Path) -> list[str]:
    return (path / "train.jsonl").read_text().splitlines()


@pytest.mark.parametrize("include_cut", [False, True])
def test_export_cli_takes_include_cut(
    database: Database, herd_env: dict[str, str], tmp_path: Path, include_cut: bool
) -> None:
    _log_kinds(Log(database.engine), votes=(1,))
    out = tmp_path / "x.jsonl"
    flags = ["--include-cut"] if include_cut else []
    run = run_herd("export", "sft", "-o", str(out), *flags, env=herd_env)
    assert run.returncode == 0, run.stderr
    assert len(out.read_text().splitlines()) == 3 + include_cut
    assert ("1 cut" in run.stdout) is not include_cut
