"""`herd dataset build/list/show` as a user runs them: real processes, database and files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from app.db.database import Database
from tests.analytics_data import insert_messages, insert_requests, request_row
from tests.conftest import run_herd

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _add(db: Database, n: int) -> None:
    rows = [request_row(T0, alias="chat", session_id=f"s{i // 2}") for i in range(n)]
    insert_requests(db.engine, rows)
    insert_messages(
        db.engine,
        [
            {
                "request_id": r["id"],
                "prompt": [
                    {
                        "role": "user",
                        "content": f"question {i} on a topic of its own " * (1 + i % 3),
                    }
                ],
                "response": f"answer {i}",
            }
            for i, r in enumerate(rows)
        ],
    )


def test_build_list_show(database: Database, herd_env: dict[str, str]) -> None:
    _add(database, 20)
    built = run_herd(
        "dataset",
        "build",
        "cli-set",
        "--alias",
        "chat",
        "--split",
        "0.5,0.25,0.25",
        "--seed",
        "3",
        "--no-near-dedup",
        "--by",
        "olivia",
        env=herd_env,
    )
    assert built.returncode == 0, built.stderr
    assert "dataset 'cli-set' (sft): 20 rows" in built.stdout
    assert "exact_duplicate" in built.stdout
    home = Path(herd_env["HERD_HOME"])
    files = sorted(p.name for p in (home / "datasets" / "cli-set").iterdir())
    assert files == [
        "README.md",
        "card.json",
        "eval",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    listed = run_herd("dataset", "list", env=herd_env)
    assert listed.returncode == 0 and "cli-set" in listed.stdout and "olivia" in listed.stdout
    shown = run_herd("dataset", "show", "cli-set", "--json", env=herd_env)
    card = json.loads(shown.stdout)
    assert card["seed"] == 3 and card["source"]["aliases"] == ["chat"]
    assert sum(card["split_rows"].values()) == 20 and card["split_rows"]["train"] == 10
    again = run_herd("dataset", "build", "cli-set", env=herd_env)
    assert again.returncode == 2 and "exists already" in again.stderr
    missing = run_herd("dataset", "show", "nope", env=herd_env)
    assert missing.returncode == 1 and "no dataset named 'nope'" in missing.stderr


def test_bad_upload_and_empty_selection_write_nothing(
    database: Database, herd_env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    run = run_herd("dataset", "build", "x", "--from-file", str(bad), env=herd_env)
    assert run.returncode == 2
    assert "line 2: not valid JSON" in run.stderr and "nothing was written" in run.stderr
    empty = run_herd("dataset", "build", "x", "--rating", "up", env=herd_env)
    assert empty.returncode == 2 and "matched no usable requests" in empty.stderr
    assert not (Path(herd_env["HERD_HOME"]) / "datasets" / "x").exists()
    assert "no datasets yet" in run_herd("dataset", "list", env=herd_env).stdout


def test_build_from_a_csv_file(herd_env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "pairs.csv"
    good.write_text(
        'prompt,response,session_id\n"Hi, what is 2+2?",4,a\n"And 3+3?",6,a\nName a fruit,Apple,\n'
    )
    run = run_herd(
        "dataset", "build", "from-csv", "--from-file", str(good), "--split", "1,0,0", env=herd_env
    )
    assert run.returncode == 0, run.stderr
    lines = (Path(herd_env["HERD_HOME"]) / "datasets" / "from-csv" / "train.jsonl").read_text()
    rows = [json.loads(x) for x in lines.splitlines()]
    assert sorted(
        (r["messages"][0]["content"], r["messages"][1]["content"], r["session_id"], r["source"])
        for r in rows
    ) == [
        ("And 3+3?", "6", "a", "upload"),
        ("Hi, what is 2+2?", "4", "a", "upload"),
        ("Name a fruit", "Apple", "line-4", "upload"),
    ]
