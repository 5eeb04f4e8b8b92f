"""Datasets for retraining on real request-log rows in PostgreSQL and real files: selection,
each cleaning step with exact counts, splits, the card, the table, load_dataset, bad input."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, insert, select

from app.analytics.eligible import REASONS
from app.datasets.build import BuildSpec, build_dataset, datasets_root
from app.datasets.card import read_card
from app.datasets.cleaning import CleaningOptions, is_refusal
from app.datasets.language import detect_language
from app.datasets.near_dup import near_duplicates
from app.datasets.rows import DatasetError, DatasetRow
from app.datasets.selection import LogSelection, Rating, read_upload, select_from_log
from app.datasets.splits import SplitRatios, split_rows
from app.datasets.store import DatasetStore
from app.datasets.teacher import (
    GenerationSettings,
    distill_requests,
    distilled_rows,
    paraphrase_requests,
    paraphrased_rows,
)
from app.db.database import Database
from app.db.tables import Dataset, FeedbackTag
from tests.analytics_data import insert_feedback, insert_messages, insert_requests, request_row

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Log:
    """Writes request-log rows (request, text, votes, tags) as the gateway and review do."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.minute = 0

    def add(
        self,
        prompt: Any,
        response: str | None,
        votes: tuple[int, ...] = (),
        tags: tuple[str, ...] = (),
        **values: Any,
    ) -> uuid.UUID:
        self.minute += 1
        row = request_row(T0 + timedelta(minutes=self.minute), **values)
        insert_requests(self.engine, [row])
        insert_messages(
            self.engine, [{"request_id": row["id"], "prompt": prompt, "response": response}]
        )
        if votes:
            insert_feedback(
                self.engine,
                [
                    {"request_id": row["id"], "rating": v, "user_id": f"u{i}"}
                    for i, v in enumerate(votes)
                ],
            )
        with self.engine.begin() as conn:
            for tag in tags:
                conn.execute(insert(FeedbackTag).values(request_id=row["id"], tag=tag))
        return row["id"]  # type: ignore[no-any-return]


@pytest.fixture
def log(database: Database) -> Log:
    return Log(database.engine)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _all_rows(directory: Path) -> list[dict[str, Any]]:
    return [r for f in sorted(directory.glob("*.jsonl")) for r in _lines(f)]


def test_every_cleaning_step_with_exact_counts(
    log: Log, database: Database, tmp_path: Path
) -> None:
    log.add(_user("What is the capital of France?"), "Paris.")
    log.add(_user("What is the capital of France?"), "Paris.")  # exact duplicate
    log.add(_user("what is the capital of FRANCE"), "It is Paris.")  # near duplicate prompt
    log.add(_user("Name three primary colours please"), "")  # empty answer
    log.add(_user("How do I pick a lock on a door"), "I'm sorry, but I can't help with that.")
    log.add(_user("x" * 300), "A long prompt's answer.")  # prompt over --max-prompt-chars
    log.add(_user("Wie ist das Wetter heute in Berlin und in der Stadt?"), "Sonnig.")
    log.add(_user("Write to me at jane@example.com or call +1 415 555 0100"), "Will do.")
    log.add(_user("Explain how photosynthesis works in plants"), "Light to sugar.")
    log.add([1, 2, 3], "token ids are not chat")  # unusable prompt
    log.add(_user("hi"), "Hello!")  # too short to tell its language: kept
    selected = select_from_log(database.engine, LogSelection())
    assert len(selected.rows) == 10 and selected.unusable == 1
    spec = BuildSpec(
        name="clean-1",
        created_by="olivia",
        cleaning=CleaningOptions(max_prompt_chars=200, languages=("en",)),
        ratios=SplitRatios(1.0, 0.0, 0.0),
    )
    root = datasets_root(tmp_path)
    info = build_dataset(database.engine, root, spec, selected)
    counts = {s["step"]: (s["rows_in"], s["removed"], s["changed"]) for s in info.steps}
    assert counts == {
        # No batch line, demo traffic, cancelled, failed or cut answer among them.
        **{f"excluded_{reason}": (11, 0, 0) for reason in REASONS},
        "unusable_prompt": (11, 1, 0),
        "empty_answer": (10, 1, 0),
        "refusal": (9, 1, 0),
        "answer_length": (8, 0, 0),
        "prompt_length": (8, 1, 0),
        "language": (7, 1, 0),
        "pii_redaction": (6, 0, 1),
        "exact_duplicate": (6, 1, 0),
        "near_duplicate": (5, 1, 0),
    }
    assert [s["step"] for s in info.steps] == list(counts)
    rows = _lines(root / "clean-1" / "train.jsonl")
    prompts = sorted(r["messages"][0]["content"] for r in rows)
    assert prompts == [
        "Explain how photosynthesis works in plants",
        "What is the capital of France?",
        "Write to me at [EMAIL] or call [PHONE]",
        "hi",
    ]
    rows.sort(key=lambda r: r["messages"][0]["content"])
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "Paris."}
    assert info.rows == 4 and info.split_rows == {"train": 4, "validation": 0, "test": 0}
    # The card beside the files and the table row say the same.
    card = read_card(root / "clean-1")
    assert card["steps"] == info.steps and card["source"]["type"] == "request_log"
    readme = (root / "clean-1" / "README.md").read_text()
    assert "| near_duplicate |" in readme and "path: train.jsonl" in readme
    with database.engine.connect() as conn:
        stored = conn.execute(select(Dataset.rows, Dataset.path, Dataset.kind)).one()
    assert tuple(stored) == (4, str(root / "clean-1"), "sft")


def test_steps_can_be_turned_off(log: Log, database: Database, tmp_path: Path) -> None:
    log.add(_user("Mail me: a@example.org"), "ok")
    log.add(_user("Mail me: a@example.org"), "ok")
    log.add(_user("Something else entirely here"), "")
    off = CleaningOptions(
        redact=False,
        exact_dedup=False,
        near_dedup=False,
        drop_empty_answers=False,
        min_answer_chars=0,
    )
    spec = BuildSpec("raw", "olivia", cleaning=off, ratios=SplitRatios(1, 0, 0))
    info = build_dataset(
        database.engine, tmp_path, spec, select_from_log(database.engine, LogSelection())
    )
    assert info.rows == 3
    assert {s["step"] for s in info.steps} == {
        *(f"excluded_{reason}" for reason in REASONS),
        "unusable_prompt",
        "refusal",
        "prompt_length",
        "answer_length",
    }
    assert "a@example.org" in (tmp_path / "raw" / "train.jsonl").read_text()


def test_selection_by_alias_period_rating_tags(log: Log, database: Database) -> None:
    up = log.add(_user("liked one"), "a", votes=(1, 1, -1), alias="chat")
    down = log.add(_user("disliked"), "b", votes=(-1,), alias="chat", session_id="s1")
    tagged = log.add(_user("tagged"), "c", votes=(-1,), tags=("hallucination",), alias="big")
    unrated = log.add(_user("unrated"), "d", alias="chat")
    log.add(_user("synthetic"), "e", votes=(1,), alias="chat", synthetic=True)
    log.add(_user("embedding"), "f", alias="chat", endpoint="embeddings")

    def ids(**kw: Any) -> set[str]:
        return {r.id for r in select_from_log(database.engine, LogSelection(**kw)).rows}

    assert ids() == {str(up), str(down), str(tagged), str(unrated)}
    assert ids(rating=Rating.UP) == {str(up)}
    assert ids(rating=Rating.DOWN) == {str(down), str(tagged)}
    assert ids(rating=Rating.RATED) == {str(up), str(down), str(tagged)}
    assert ids(tags=("Hallucination ",)) == {str(tagged)}  # cleaned as review stores tags
    assert ids(aliases=("big",)) == {str(tagged)}
    assert ids(start=T0 + timedelta(minutes=2), end=T0 + timedelta(minutes=4)) == {
        str(down),
        str(tagged),
    }
    assert len(ids(include_synthetic=True)) == 5
    rows = select_from_log(database.engine, LogSelection(rating=Rating.DOWN)).rows
    assert {r.session for r in rows} == {"s1", str(tagged)}  # no session: its own


def _conversations(log: Log, sessions: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    for s in range(sessions):
        history: list[dict[str, str]] = []
        for turn in range(rnd.randint(1, 4)):
            history = [
                *history,
                {
                    "role": "user",
                    "content": f"session {s} question {turn} about topic {rnd.random()}",
                },
            ]
            answer = f"answer {turn} for session {s}"
            log.add(history, answer, session_id=f"sess-{s}")
            history = [*history, {"role": "assistant", "content": answer}]


def test_splits_are_seeded_and_keep_conversations_together(
    log: Log, database: Database, tmp_path: Path
) -> None:
    _conversations(log, 60)
    selected = select_from_log(database.engine, LogSelection())
    total = len(selected.rows)
    no_near = CleaningOptions(near_dedup=False)
    infos = [
        build_dataset(
            database.engine, tmp_path, BuildSpec(name, "o", cleaning=no_near, seed=s), selected
        )
        for name, s in (("a", 1), ("b", 1), ("c", 2))
    ]
    files = {i.name: {p.name: p.read_bytes() for p in i.path.glob("*.jsonl")} for i in infos}
    assert files["a"] == files["b"]  # same seed: same bytes
    assert files["a"] != files["c"]
    for info in infos:
        assert info.rows == total
        where: dict[str, set[str]] = {}
        for split in ("train", "validation", "test"):
            for row in _lines(info.path / f"{split}.jsonl"):
                where.setdefault(row["session_id"], set()).add(split)
        assert all(len(s) == 1 for s in where.values()), "a conversation straddles splits"
        assert len(where) == 60
        # Cut at whole conversations (1-4 turns): within 4 rows of the ratio.
        assert abs(info.split_rows["train"] - 0.8 * total) <= 4
        assert abs(info.split_rows["validation"] - 0.1 * total) <= 4
    # The test split again, as the prompt set `herd eval --prompts` scores a student on.
    held = _lines(infos[0].path / "eval" / "test.prompts.jsonl")
    test_rows = _lines(infos[0].path / "test.jsonl")
    assert infos[0].card["held_out_prompts"] == "eval/test.prompts.jsonl"
    assert held == [
        {"prompt": r["messages"][:-1], "reference": r["messages"][-1]["content"]} for r in test_rows
    ]
    # The split does not depend on the order rows come in.
    shuffled = list(selected.rows)
    random.Random(3).shuffle(shuffled)
    by_order = split_rows(selected.rows, SplitRatios(), 1)
    by_shuffled = split_rows(shuffled, SplitRatios(), 1)
    assert {k: {r.id for r in v} for k, v in by_order.items()} == {
        k: {r.id for r in v} for k, v in by_shuffled.items()
    }


def test_export_loads_with_load_dataset(log: Log, database: Database, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    _conversations(log, 30, seed=3)
    info = build_dataset(
        database.engine,
        tmp_path / "ds",
        BuildSpec("hf", "o"),
        select_from_log(database.engine, LogSelection()),
    )
    files = {split: str(info.path / name) for split, name in info.card["files"].items()}
    loaded = datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path / "hf"))
    assert {k: loaded[k].num_rows for k in loaded} == {
        k: v for k, v in info.split_rows.items() if v
    }
    first = loaded["train"][0]
    assert first["messages"][-1]["role"] == "assistant"
    assert set(first) == {"messages", "id", "session_id", "source", "synthetic", "parent_id"}
    # The README's YAML front matter lets the folder load by itself too.
    by_dir = datasets.load_dataset(str(info.path), cache_dir=str(tmp_path / "hf2"))
    assert by_dir["train"].num_rows == info.split_rows["train"]


def test_empty_selection_is_a_clear_error_and_writes_nothing(
    log: Log, database: Database, tmp_path: Path
) -> None:
    log.add(_user("only unrated"), "x")
    selected = select_from_log(database.engine, LogSelection(rating=Rating.UP))
    with pytest.raises(DatasetError, match="matched no usable requests; nothing was written"):
        build_dataset(database.engine, tmp_path, BuildSpec("none", "o"), selected)
    all_refused = select_from_log(database.engine, LogSelection())
    spec = BuildSpec("none", "o", cleaning=CleaningOptions(min_prompt_chars=1000))
    with pytest.raises(DatasetError, match=r"cleaning removed every row.*prompt_length -1"):
        build_dataset(database.engine, tmp_path, spec, all_refused)
    assert list(tmp_path.iterdir()) == []
    assert DatasetStore(database.engine).list() == []


def test_a_taken_name_or_a_bad_name_is_refused(
    log: Log, database: Database, tmp_path: Path
) -> None:
    log.add(_user("a question here"), "an answer")
    selected = select_from_log(database.engine, LogSelection())
    build_dataset(database.engine, tmp_path, BuildSpec("one", "o"), selected)
    with pytest.raises(DatasetError, match="exists already"):
        build_dataset(database.engine, tmp_path, BuildSpec("one", "o"), selected)
    for bad in ("../up", ".hidden", "a/b", ""):
        with pytest.raises(DatasetError, match="dataset name"):
            build_dataset(database.engine, tmp_path, BuildSpec(bad, "o"), selected)
    with database.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Dataset)).scalar_one() == 1


def test_upload_jsonl_and_csv(database: Database, tmp_path: Path) -> None:
    body = (
        "\n".join(
            json.dumps(x)
            for x in [
                {
                    "messages": [
                        {"role": "user", "content": "Q1 about the sea"},
                        {"role": "assistant", "content": "A1"},
                    ],
                    "session_id": "c1",
                },
                {"prompt": "Q2 about the mountains", "response": "A2", "session_id": "c1"},
                {
                    "prompt": [
                        {"role": "system", "content": "brief"},
                        {"role": "user", "content": "Q3"},
                    ],
                    "completion": "A3",
                },
                {"prompt": "only a prompt with no answer"},
            ]
        )
        + "\n\n"
    )
    selected = read_upload("mine.jsonl", body.encode())
    assert [(r.prompt[-1]["content"], r.response, r.session) for r in selected.rows] == [
        ("Q1 about the sea", "A1", "c1"),
        ("Q2 about the mountains", "A2", "c1"),
        ("Q3", "A3", "line-3"),
        ("only a prompt with no answer", None, "line-4"),
    ]
    assert selected.source["type"] == "upload" and len(selected.source["sha256"]) == 64
    info = build_dataset(database.engine, tmp_path, BuildSpec("up", "o"), selected)
    assert info.steps[1] == {
        "step": "empty_answer",
        "description": "no answer, or only whitespace",
        "rows_in": 4,
        "removed": 1,
        "changed": 0,
        "rows_out": 3,
    }
    csv_body = 'prompt,response,session_id\n"Hello, there","Hi ""you""",s\nSecond,Two,\n'
    rows = read_upload("mine.csv", csv_body.encode()).rows
    assert [(r.prompt[0]["content"], r.response, r.session) for r in rows] == [
        ("Hello, there", 'Hi "you"', "s"),
        ("Second", "Two", "line-3"),
    ]


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        (
            "f.jsonl",
            '{"prompt": "ok"}\n{"prompt": \n[1]\n{"text": "x"}\n',
            "line 2: not valid JSON",
        ),
        (
            "f.jsonl",
            '{"prompt": "ok"}\n[1]\n{"text": "x"}\n{"prompt": ""}\n',
            "3 bad line(s) in the upload; nothing was written:\nline 2: a line must be a JSON "
            'object\nline 3: a record needs "messages" or "prompt"\nline 4: "prompt" must be a '
            "non-empty string or a list of messages",
        ),
        (
            "f.jsonl",
            '{"messages": [{"role": "robot", "content": "x"}]}\n',
            'line 1: "messages" must be a list',
        ),
        (
            "f.jsonl",
            '{"messages": [{"role": "assistant", "content": "x"}]}\n',
            "line 1: the record has no prompt before its answer",
        ),
        ("f.jsonl", '{"prompt": "p", "response": 5}\n', 'line 1: "response" must be a string'),
        ("f.jsonl", "\n  \n", "f.jsonl: the file holds no records"),
        ("f.csv", "question,answer\nq,a\n", 'needs a header line with a "prompt" column'),
        ("f.txt", "hello", "upload a .jsonl or .csv file"),
    ],
)
def test_bad_uploads_name_their_lines(name: str, body: str, message: str) -> None:
    with pytest.raises(DatasetError) as caught:
        read_upload(name, body.encode())
    assert message in str(caught.value)


def test_bad_upload_bytes_are_refused() -> None:
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        read_upload("f.jsonl", b'{"prompt": "\xff"}\n')


def test_many_bad_lines_are_summarised() -> None:
    with pytest.raises(DatasetError) as caught:
        read_upload("f.jsonl", b"nope\n" * 50)
    assert str(caught.value).startswith("50 bad line(s)")
    assert "line 20: not valid JSON" in str(caught.value)
    assert "line 21:" not in str(caught.value) and "... and 30 more" in str(caught.value)


def test_near_duplicates_exact_flags() -> None:
    texts = [
        "How do I reset my password on the website?",
        "how do I reset my password on the website",  # same words: dropped
        "How do I reset my password on the web site today, and also my user name?",  # kept
        "Completely unrelated question about gardening tomatoes",
        "",  # no words: never flagged
        "",
        "How do I reset my password on the website?!",  # dropped
    ]
    assert near_duplicates(texts).tolist() == [False, True, False, False, False, False, True]


def test_near_duplicates_find_planted_copies_among_many() -> None:
    rnd = random.Random(5)
    vocab = [f"word{i}" for i in range(3000)]
    texts = [" ".join(rnd.choice(vocab) for _ in range(rnd.randint(12, 30))) for _ in range(20000)]
    planted = []
    for i in rnd.sample(range(len(texts)), 500):
        words = texts[i].split()
        # One word appended: Jaccard of word 3-grams (n-2)/(n-1) >= 10/11 for n >= 12 words.
        texts.append(" ".join([*words, "extra"]))
        planted.append(len(texts) - 1)
    dropped = near_duplicates(texts)
    assert dropped[planted].mean() >= 0.98  # banding may miss a few near 0.8
    assert dropped[:20000].sum() == 0  # random texts are not similar to each other


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("What is the capital of France?", "en"),
        ("Wie ist das Wetter heute in Berlin?", "de"),
        ("Quelle est la capitale de la France ?", "fr"),
        ("¿Cuál es la capital de España y por qué?", "es"),
        ("Hoe gaat het met je vandaag?", "nl"),
        ("Привет, как дела?", "cyrillic"),
        ("こんにちはお元気ですか", "japanese"),
        ("hi", "unknown"),
        ("12345 !!", "unknown"),
    ],
)
def test_language_guess(text: str, language: str) -> None:
    assert detect_language(text) == language


@pytest.mark.parametrize(
    ("answer", "refusal"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I’m sorry, I cannot assist with this request.", True),
        ("I cannot help with that request.", True),
        ("As an AI language model, I don't have opinions.", True),
        ("Sorry, I can't do that.", True),
        ("I'm sorry to hear that! Here is how to fix it: ...", False),
        ("You cannot divide by zero, so the answer is undefined.", False),
        ("Paris is the capital of France.", False),
    ],
)
def test_refusal_filter(answer: str, refusal: bool) -> None:
    assert is_refusal(answer) is refusal


def test_rows_keep_one_schema() -> None:
    row = DatasetRow("1", "s", ({"role": "user", "content": "q"},))
    assert row.record() == {
        "messages": [{"role": "user", "content": "q"}],
        "id": "1",
        "session_id": "s",
        "source": "request_log",
        "synthetic": False,
        "parent_id": "",
    }


@dataclass
class Line:
    """A batch line's outcome as app.batches.service.BatchResult exposes it."""

    ok: bool
    text: str | None
    finish_reason: str | None = "stop"


def test_distillation_bodies_and_rows() -> None:
    rows = [
        DatasetRow(
            "a", "s1", ({"role": "system", "content": "old"}, {"role": "user", "content": "Q1"})
        ),
        DatasetRow("b", "s2", ({"role": "user", "content": "Q2"},), response="student answer"),
        DatasetRow("c", "s3", ({"role": "user", "content": "Q3"},)),
    ]
    teacher = GenerationSettings("big", max_tokens=64, temperature=0.2, system_prompt="Be exact.")
    ids, bodies = distill_requests(rows, teacher)
    assert ids == ["r0", "r1", "r2"]
    assert bodies[0] == {
        "messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Q1"}],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 1.0,
        "seed": 0,
    }
    out, steps = distilled_rows(
        rows, {"r0": Line(True, "T1"), "r1": Line(True, "T2"), "r2": Line(False, None)}, teacher
    )
    assert [(r.id, r.response, r.source) for r in out] == [
        ("a", "T1", "distill"),
        ("b", "T2", "distill"),
    ]
    assert [(s.step, s.rows_in, s.removed) for s in steps] == [
        ("teacher_failed", 3, 1),
        ("teacher_cut", 2, 0),
    ]
    with pytest.raises(DatasetError, match="alias"):
        GenerationSettings("")


def test_answers_cut_at_max_tokens_are_dropped_and_counted() -> None:
    """`herd dataset distill --max-tokens 32` must not keep answers that end mid-sentence,
    nor augment paraphrases that do; --include-cut keeps both."""
    rows = [
        DatasetRow("a", "s1", ({"role": "user", "content": "What is the capital of France?"},)),
        DatasetRow("b", "s2", ({"role": "user", "content": "Explain the theory of relativity."},)),
    ]
    results = {
        "r0": Line(True, "Paris.", "stop"),
        "r1": Line(True, "Relativity is a theory that", "length"),
    }
    teacher = GenerationSettings("big", max_tokens=32)
    out, steps = distilled_rows(rows, results, teacher)
    assert [(r.id, r.response) for r in out] == [("a", "Paris.")]
    assert [(s.step, s.rows_in, s.removed) for s in steps] == [
        ("teacher_failed", 2, 0),
        ("teacher_cut", 2, 1),
    ]
    assert "max_tokens (32)" in steps[1].description
    kept, steps = distilled_rows(rows, results, GenerationSettings("big", keep_cut=True))
    assert len(kept) == 2 and [s.step for s in steps] == ["teacher_failed"]

    para = {
        "r0-p0": Line(True, "Which city is the capital of France?"),
        "r0-p1": Line(True, "Which city is France's", "length"),
        "r1-p0": Line(True, "Could you explain relativity theory to me?"),
        "r1-p1": Line(False, None),
    }
    out, steps = paraphrased_rows(rows, para, 2, GenerationSettings("para"))
    assert [r.id for r in out] == ["a", "b", "a-p0", "b-p0"]
    assert [(s.step, s.rows_in, s.removed) for s in steps][:2] == [
        ("paraphrase_failed", 4, 1),
        ("paraphrase_cut", 3, 1),
    ]
    out, steps = paraphrased_rows(rows, para, 2, GenerationSettings("para", keep_cut=True))
    assert "a-p1" in [r.id for r in out] and "paraphrase_cut" not in [s.step for s in steps]


def test_augmentation_bodies_and_rows() -> None:
    rows = [
        DatasetRow(
            "a", "s1", ({"role": "user", "content": "How do I bake bread at home?"},), "Knead."
        ),
        DatasetRow("b", "s2", ({"role": "user", "content": "What is the speed of light?"},), "c"),
    ]
    ids, bodies = paraphrase_requests(rows, 3, GenerationSettings("para", temperature=0.9))
    assert ids == ["r0-p0", "r0-p1", "r0-p2", "r1-p0", "r1-p1", "r1-p2"]
    assert [b["seed"] for b in bodies] == [0, 1, 2, 0, 1, 2]
    assert bodies[0]["messages"][1] == {"role": "user", "content": "How do I bake bread at home?"}
    results = {
        "r0-p0": Line(True, 'Here is a paraphrase: "What is the way to make bread in my kitchen?"'),
        "r0-p1": Line(True, "how do I bake bread at home?"),  # the original, case aside
        "r0-p2": Line(True, "What is the way to make bread in my kitchen"),  # near the first
        "r1-p0": Line(False, None),
        "r1-p1": Line(True, "   "),
        "r1-p2": Line(True, "How fast does light travel?"),
    }
    out, steps = paraphrased_rows(rows, results, 3, GenerationSettings("para"))
    assert [(s.step, s.rows_in, s.removed) for s in steps] == [
        ("paraphrase_failed", 6, 2),
        ("paraphrase_cut", 4, 0),
        ("paraphrase_exact_duplicate", 4, 1),
        ("paraphrase_near_duplicate", 3, 1),
    ]
    assert [
        (r.id, r.last_user_text(), r.synthetic, r.parent_id, r.session, r.response) for r in out
    ] == [
        ("a", "How do I bake bread at home?", False, "", "s1", "Knead."),
        ("b", "What is the speed of light?", False, "", "s2", "c"),
        ("a-p0", "What is the way to make bread in my kitchen?", True, "a", "s1", "Knead."),
        ("b-p2", "How fast does light travel?", True, "b", "s2", "c"),
    ]
    with pytest.raises(DatasetError, match="1 to 20"):
        paraphrase_requests(rows, 0, GenerationSettings("para"))


def test_near_duplicates_agree_with_datasketch() -> None:
    """The same shingles through datasketch's MinHash + MinHashLSH (query, then insert the
    kept): the two decide alike on nearly every text."""
    from datasketch import MinHash, MinHashLSH

    rnd = random.Random(11)
    vocab = [f"v{i}" for i in range(2000)]
    texts: list[str] = []
    for i in range(3000):
        if i > 10 and rnd.random() < 0.2:
            words = texts[rnd.randrange(i)].split()
            texts.append(
                " ".join(rnd.choice([[*words, "more"], words[:-1], [w.upper() for w in words]]))
            )
        else:
            texts.append(" ".join(rnd.choices(vocab, k=rnd.randint(8, 24))))
    ours = near_duplicates(texts)
    lsh = MinHashLSH(threshold=0.8, num_perm=64)
    theirs = []
    for i, text in enumerate(texts):
        words = text.lower().split()
        m = MinHash(num_perm=64)
        m.update_batch([" ".join(words[j : j + 3]).encode() for j in range(max(len(words) - 2, 1))])
        found = bool(lsh.query(m))
        theirs.append(found)
        if not found:
            lsh.insert(str(i), m)
    assert ours.sum() > 400
    assert (ours == np.array(theirs)).mean() >= 0.98


def test_build_from_demo_traffic(database: Database, tmp_path: Path) -> None:
    """`herd demo-traffic` rows (synthetic, many sessions): the report's counts chain up."""
    from app.analytics.demo_traffic import generate_demo_traffic

    generate_demo_traffic(database.engine, 3000, days=2, seed=0.3, now=datetime.now(UTC))
    selected = select_from_log(database.engine, LogSelection(include_synthetic=True))
    assert select_from_log(database.engine, LogSelection()).rows == []  # synthetic: opt in
    info = build_dataset(database.engine, tmp_path, BuildSpec("demo", "o", seed=5), selected)
    # From every matched row, less those that are no real user turn, to the rows written.
    assert selected.excluded is not None
    assert selected.excluded.eligible == len(selected.rows) + selected.unusable
    rows_in = selected.excluded.matched
    for step in info.steps:
        assert step["rows_in"] == rows_in
        rows_in = step["rows_out"]
    assert rows_in == info.rows == sum(info.split_rows.values()) == len(_all_rows(info.path))
    assert info.split_rows["train"] > info.split_rows["validation"] > 0
