"""Feedback review: listing with filters, tags, corrections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.analytics.review import (
    ReviewError,
    ReviewFilter,
    add_tag,
    conversation,
    list_rated,
    remove_tag,
    save_correction,
)
from app.db.database import Database
from tests.analytics_data import (
    add_model,
    insert_feedback,
    insert_messages,
    insert_requests,
    request_row,
)


def test_browse_tag_and_correct(database: Database) -> None:
    engine = database.engine
    model = add_model(engine, "m.gguf")
    now = datetime.now(UTC)
    rows = [request_row(now - timedelta(minutes=i), model_id=model) for i in range(3)]
    insert_requests(engine, rows)
    insert_messages(
        engine,
        [
            {
                "request_id": r["id"],
                "prompt": [{"role": "user", "content": f"question {i}"}],
                "response": f"answer {i}",
            }
            for i, r in enumerate(rows)
        ],
    )
    insert_feedback(
        engine,
        [
            {"request_id": rows[0]["id"], "rating": -1, "comment": "Wrong about refunds"},
            {"request_id": rows[1]["id"], "rating": 1, "comment": None},
        ],
    )
    down = list_rated(engine, ReviewFilter(rating=-1))
    assert [r["request_id"] for r in down] == [rows[0]["id"]]
    assert down[0]["comment"] == "Wrong about refunds" and down[0]["net"] == -1
    assert len(list_rated(engine, ReviewFilter())) == 2  # the unrated request is not listed
    assert [r["request_id"] for r in list_rated(engine, ReviewFilter(search="REFUND"))] == [
        rows[0]["id"]
    ]
    assert [r["request_id"] for r in list_rated(engine, ReviewFilter(search="answer 1"))] == [
        rows[1]["id"]
    ]
    assert list_rated(engine, ReviewFilter(start=now + timedelta(hours=1))) == []

    assert add_tag(engine, rows[0]["id"], "  Hallucination ", "ops") == "hallucination"
    add_tag(engine, rows[0]["id"], "hallucination", "ops")  # idempotent
    add_tag(engine, rows[0]["id"], "billing", "ops")
    assert list_rated(engine, ReviewFilter(tag="billing"))[0]["tags"] == [
        "billing",
        "hallucination",
    ]
    remove_tag(engine, rows[0]["id"], "billing")
    with pytest.raises(ReviewError):
        add_tag(engine, rows[0]["id"], "   ", "ops")

    save_correction(engine, rows[0]["id"], "first try", "ops")
    save_correction(engine, rows[0]["id"], "Refunds take 14 days.", "lead")
    found = conversation(engine, rows[0]["id"])
    assert found is not None
    assert found["correction"] == "Refunds take 14 days." and found["corrected_by"] == "lead"
    assert found["tags"] == ["hallucination"]
    assert found["prompt"] == [{"role": "user", "content": "question 0"}]
    assert [v["rating"] for v in found["votes"]] == [-1]
    assert [r["request_id"] for r in list_rated(engine, ReviewFilter(corrected=True))] == [
        rows[0]["id"]
    ]
    with pytest.raises(ReviewError):
        save_correction(engine, rows[0]["id"], "  ", "ops")


def test_list_sums_only_the_votes_inside_the_window(database: Database) -> None:
    # Votes on both sides of the window's edges: the list sums the ones inside, as it did
    # before the feedback_reviews rollup, whose row holds every vote of the request.
    engine = database.engine
    base = datetime(2026, 3, 1, tzinfo=UTC)
    straddling, inside, outside = (request_row(base, alias="chat") for _ in range(3))
    insert_requests(engine, [straddling, inside, outside])
    insert_feedback(
        engine,
        [
            {"request_id": straddling["id"], "rating": -1, "user_id": "a", "comment": "old",
             "created_at": base, "updated_at": base},
            {"request_id": straddling["id"], "rating": 1, "user_id": "b", "comment": "",
             "created_at": base + timedelta(days=2), "updated_at": base + timedelta(days=2)},
            {"request_id": straddling["id"], "rating": 1, "user_id": "c", "comment": "late",
             "created_at": base + timedelta(days=9), "updated_at": base + timedelta(days=9)},
            {"request_id": inside["id"], "rating": -1, "user_id": "a", "comment": "bad",
             "created_at": base + timedelta(days=3), "updated_at": base + timedelta(days=3)},
            {"request_id": outside["id"], "rating": 1, "user_id": "a", "comment": "",
             "created_at": base + timedelta(days=20), "updated_at": base + timedelta(days=20)},
        ],
    )  # fmt: skip
    window = ReviewFilter(start=base + timedelta(days=1), end=base + timedelta(days=5))
    listed = {r["request_id"]: r for r in list_rated(engine, window)}
    assert set(listed) == {straddling["id"], inside["id"]}
    assert (listed[straddling["id"]]["net"], listed[straddling["id"]]["votes"]) == (1, 1)
    assert listed[straddling["id"]]["comment"] is None
    assert listed[straddling["id"]]["rated_at"] == base + timedelta(days=2)
    assert [r["request_id"] for r in list_rated(engine, ReviewFilter(rating=-1))] == [
        inside["id"]  # all three votes of the straddling request: net +1
    ]
    down = list_rated(engine, ReviewFilter(rating=-1, end=base + timedelta(days=1)))
    assert [(r["request_id"], r["net"], r["comment"]) for r in down] == [
        (straddling["id"], -1, "old")
    ]
