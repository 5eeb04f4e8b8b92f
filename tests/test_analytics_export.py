"""Dataset export: every line checked (schema, redaction, no duplicates), the card, filters."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.analytics.export import (
    DatasetKind,
    ExportError,
    ExportFilter,
    export_dataset,
    read_card,
)
from app.analytics.redact import redact_text
from app.analytics.review import save_correction
from app.db.database import Database
from tests.analytics_data import (
    add_model,
    insert_feedback,
    insert_messages,
    insert_requests,
    request_row,
)

T0 = datetime(2026, 2, 1, tzinfo=UTC)
PII = re.compile(r"@example\.com|4111[ -]?1111|555[ .-]?123[ .-]?4567")


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def _conversation(
    db: Database, model_id: int, prompt: Any, response: str, votes: list[int], minutes: int
) -> uuid.UUID:
    row = request_row(T0 + timedelta(minutes=minutes), model_id=model_id)
    insert_requests(db.engine, [row])
    insert_messages(db.engine, [{"request_id": row["id"], "prompt": prompt, "response": response}])
    insert_feedback(
        db.engine,
        [{"request_id": row["id"], "rating": v, "user_id": f"u{i}"} for i, v in enumerate(votes)],
    )
    return row["id"]


@pytest.fixture
def rated(database: Database) -> dict[str, Any]:
    a, b = add_model(database.engine, "a.gguf"), add_model(database.engine, "b.gguf")
    pii = _user("I am jane@example.com, card 4111 1111 1111 1111, phone +1 555-123-4567")
    ids = {
        "good": _conversation(database, a, pii, "Thanks jane@example.com, done.", [1], 1),
        # The same liked exchange twice: one SFT line.
        "dup1": _conversation(database, a, _user("hi"), "Hello!", [1], 2),
        "dup2": _conversation(database, a, _user("hi"), "Hello!", [1, 1], 3),
        # Same prompt, rated differently: a preference pair.
        "bad": _conversation(database, a, _user("hi"), "Go away.", [-1], 4),
        "mixed": _conversation(database, b, _user("2+2?"), "5", [1, -1], 5),
        "wrong": _conversation(database, b, _user("capital of France?"), "Lyon", [-1], 6),
        "late": _conversation(database, b, "plain prompt string", "An answer.", [1], 60 * 24),
    }
    save_correction(database.engine, ids["wrong"], "Paris.", "ops")
    return {"db": database, "ids": ids, "a": a, "b": b}


def _lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_text(encoding="utf-8").splitlines()
    assert len(raw) == len(set(raw)), "duplicate lines"
    return [json.loads(line) for line in raw]


def _check_messages(messages: Any) -> None:
    assert isinstance(messages, list) and messages
    for message in messages:
        assert set(message) == {"role", "content"}
        assert message["role"] in {"system", "user", "assistant"}
        assert isinstance(message["content"], str)
        assert not PII.search(message["content"]), message


def test_sft_export_lines_and_card(rated: dict[str, Any], tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    out = tmp_path / "sft.jsonl"
    result = export_dataset(
        rated["db"].engine,
        DatasetKind.SFT,
        out,
        progress=lambda done, total: progress.append((done, total)),
    )
    lines = _lines(out)
    assert len(lines) == result.records == 3  # good, hi/Hello (once), plain prompt
    assert result.duplicates == 1
    for line in lines:
        assert set(line) == {"messages"}
        _check_messages(line["messages"])
        assert line["messages"][-1]["role"] == "assistant"
    texts = json.dumps(lines)
    assert "[EMAIL]" in texts and "[CARD]" in texts and "[PHONE]" in texts
    assert "Go away." not in texts and "5" not in [m["messages"][-1]["content"] for m in lines]
    assert {"role": "user", "content": "plain prompt string"} in lines[-1]["messages"]
    assert progress and progress[-1] == (4, 4)
    card = read_card(result.card_path)
    assert result.card_path == tmp_path / "sft.card.md"
    assert card["records"] == 3 and card["duplicates_removed"] == 1
    assert card["date_range"][0].startswith("2026-02-01")
    assert not (tmp_path / "sft.jsonl.partial").exists()


def test_sft_filters_by_model_and_time(rated: dict[str, Any], tmp_path: Path) -> None:
    engine = rated["db"].engine
    only_b = export_dataset(
        engine, DatasetKind.SFT, tmp_path / "b.jsonl", ExportFilter(model_ids=(rated["b"],))
    )
    assert only_b.records == 1
    first_day = ExportFilter(end=T0 + timedelta(hours=1), min_rating=2)
    strict = export_dataset(engine, DatasetKind.SFT, tmp_path / "s.jsonl", first_day)
    assert [line["messages"][-1]["content"] for line in _lines(strict.path)] == ["Hello!"]
    with pytest.raises(ExportError):
        export_dataset(engine, DatasetKind.SFT, tmp_path / "x.jsonl", ExportFilter(min_rating=0))


def test_preference_export_pairs_and_corrections(rated: dict[str, Any], tmp_path: Path) -> None:
    result = export_dataset(rated["db"].engine, DatasetKind.PREFERENCE, tmp_path / "p.jsonl")
    lines = _lines(result.path)
    assert len(lines) == 2
    by_source = {line["source"]: line for line in lines}
    assert set(by_source) == {"same_prompt", "correction"}
    pair = by_source["same_prompt"]
    assert pair["chosen"] == [{"role": "assistant", "content": "Hello!"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Go away."}]
    fixed = by_source["correction"]
    assert fixed["chosen"][0]["content"] == "Paris." and fixed["rejected"][0]["content"] == "Lyon"
    for line in lines:
        assert set(line) == {"prompt", "chosen", "rejected", "source"}
        for key in ("prompt", "chosen", "rejected"):
            _check_messages(line[key])
    assert read_card(result.card_path)["by_source"] == {"same_prompt": 1, "correction": 1}


def test_synthetic_rows_are_left_out_unless_asked(rated: dict[str, Any], tmp_path: Path) -> None:
    engine = rated["db"].engine
    with engine.begin() as conn:
        conn.execute(text("UPDATE requests SET synthetic = true"))
    empty = export_dataset(engine, DatasetKind.SFT, tmp_path / "e.jsonl")
    assert empty.records == 0 and (tmp_path / "e.jsonl").read_text() == ""
    full = export_dataset(
        engine, DatasetKind.SFT, tmp_path / "f.jsonl", ExportFilter(include_synthetic=True)
    )
    assert full.records == 3


def test_export_loads_with_the_datasets_json_loader(rated: dict[str, Any], tmp_path: Path) -> None:
    import datasets

    sft = export_dataset(rated["db"].engine, DatasetKind.SFT, tmp_path / "sft.jsonl")
    pref = export_dataset(rated["db"].engine, DatasetKind.PREFERENCE, tmp_path / "pref.jsonl")
    cache = str(tmp_path / "hf-cache")
    loaded = datasets.load_dataset("json", data_files=str(sft.path), cache_dir=cache)["train"]
    assert loaded.num_rows == 3 and loaded.column_names == ["messages"]
    loaded = datasets.load_dataset("json", data_files=str(pref.path), cache_dir=cache)["train"]
    assert loaded.num_rows == 2
    assert set(loaded.column_names) == {"prompt", "chosen", "rejected", "source"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to a.b-c+d@mail.example.org today", "write to [EMAIL] today"),
        ("card 4111-1111-1111-1111.", "card [CARD]."),
        ("call (555) 123 4567 or +44 20 7946 0958", "call [PHONE] or [PHONE]"),
        ("on 2024-01-15, version 1.2.3, order 12345", "on 2024-01-15, version 1.2.3, order 12345"),
        ("host 192.168.100.200", "host 192.168.100.200"),
    ],
)
def test_redaction(text: str, expected: str) -> None:
    assert redact_text(text) == expected
