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
