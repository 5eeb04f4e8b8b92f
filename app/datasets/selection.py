"""Where a dataset's prompts come from: the request log (filters; real user turns only, as
app/analytics/eligible.py defines them) or an uploaded file."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine

from app.analytics.eligible import ELIGIBLE, Breakdown, breakdown
from app.analytics.export import (
    NET_RATINGS,
    SCOPE_FILTERS,
    ExportFilter,
    prompt_messages,
    stream_rows,
)
from app.analytics.review import ReviewError, clean_tag
from app.datasets.rows import DatasetError, DatasetRow
from app.openai_api.text import bad_text_at

SelectProgress = Callable[[int, int], None]
# Most errors an upload reports at once: enough to fix a file in one go, not a flood.
MAX_REPORTED_ERRORS = 20


class Rating(StrEnum):
    """Which requests by their net rating (sum of votes)."""

    ANY = "any"  # rated or not
    RATED = "rated"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class LogSelection:
    """Which logged requests a dataset reads; empty tuples and None mean 'any'."""

    start: datetime | None = None
    end: datetime | None = None
    aliases: tuple[str, ...] = ()
    model_ids: tuple[int, ...] = ()
    rating: Rating = Rating.ANY
    tags: tuple[str, ...] = ()  # from Feedback review: a request with any of them
    include_synthetic: bool = False
    # Answers that stopped at max_tokens (finish_reason 'length'): left out unless asked.
    include_cut: bool = False
    limit: int | None = None

    def params(self) -> dict[str, Any]:
        # The time/model/alias/eligibility part is the one `herd export` binds.
        scope = ExportFilter(
            start=self.start,
            end=self.end,
            model_ids=self.model_ids,
            aliases=self.aliases,
            include_synthetic=self.include_synthetic,
            include_cut=self.include_cut,
        )
        try:
            tags = sorted({clean_tag(t) for t in self.tags})
        except ReviewError as exc:
            raise DatasetError(str(exc)) from exc
        return {
            **scope.params(),
            "rating": Rating(self.rating).value,
            "tags": tags,
            "limit": self.limit,
        }

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("start", "end"):
            out[key] = out[key].isoformat() if out[key] else None
        out["aliases"], out["model_ids"] = list(self.aliases), list(self.model_ids)
        out["tags"], out["rating"] = list(self.tags), Rating(self.rating).value
        return {"type": "request_log", **out}


# The requests with text a selection's filters match, real user turns or not.
MATCHED_SQL = f"""
    FROM requests r
    JOIN messages msg ON msg.request_id = r.id
    LEFT JOIN {NET_RATINGS} f ON f.request_id = r.id
    WHERE {SCOPE_FILTERS}
      AND r.endpoint <> 'embeddings'
      AND (:rating = 'any' OR (:rating = 'rated' AND f.net IS NOT NULL)
           OR (:rating = 'up' AND f.net > 0) OR (:rating = 'down' AND f.net < 0))
      AND (cardinality(CAST(:tags AS text[])) = 0 OR EXISTS (
           SELECT 1 FROM feedback_tags t WHERE t.request_id = r.id AND t.tag = ANY(:tags)))
"""
# Those that are real user turns, oldest first (the order cleaning keeps the first of).
SELECT_SQL = f"""
    SELECT r.id, r.created_at, r.session_id, msg.prompt, msg.response
    {MATCHED_SQL}
      AND {ELIGIBLE}
    ORDER BY r.created_at, r.id
    LIMIT :limit
"""


@dataclass
class Selected:
    """The rows a selection produced and what it could not use."""

    rows: list[DatasetRow]
    source: dict[str, Any]
    unusable: int = 0  # prompts that are not chat messages (e.g. raw completions of tokens)
    # Request log: the matched rows, and those left out as no real user turn, per reason
    # (None for an upload).
    excluded: Breakdown | None = None


def select_from_log(
    engine: Engine, selection: LogSelection, progress: SelectProgress | None = None
) -> Selected:
    """The logged requests matching selection, as rows (the logged answer kept)."""
    params = selection.params()
    excluded = breakdown(engine, MATCHED_SQL, params)
    total = (
        excluded.eligible if selection.limit is None else min(excluded.eligible, selection.limit)
    )
    out = Selected([], selection.describe(), excluded=excluded)
    for done, row in enumerate(stream_rows(engine, SELECT_SQL, params), start=1):
        messages = prompt_messages(row["prompt"])
        if messages is None:
            out.unusable += 1
        else:
            request_id = str(row["id"])
            out.rows.append(
                DatasetRow(
                    id=request_id,
                    session=row["session_id"] or request_id,
                    prompt=tuple(messages),
                    response=row["response"],
                )
            )
        if progress is not None and (done % 2000 == 0 or done == total):
            progress(done, total)
    return out


def _row_from_object(obj: Any, number: int) -> DatasetRow:
    """One uploaded record: {"messages": [...]} (a last assistant message is the answer) or
    {"prompt": text or messages, "response"/"completion": text}; optional id, session_id."""
    if not isinstance(obj, dict):
        raise ValueError("a line must be a JSON object")
    response = obj.get("response", obj.get("completion"))
    if "messages" in obj:
        messages = prompt_messages(obj["messages"])
        if messages is None:
            raise ValueError('"messages" must be a list of {"role", "content"} objects')
        if messages[-1]["role"] == "assistant" and response is None:
            response = messages[-1]["content"]
            messages = messages[:-1]
    elif "prompt" in obj:
        messages = prompt_messages(obj["prompt"])
        if messages is None:
            raise ValueError('"prompt" must be a non-empty string or a list of messages')
    else:
        raise ValueError('a record needs "messages" or "prompt"')
    if not messages:
        raise ValueError("the record has no prompt before its answer")
    if response is not None and not isinstance(response, str):
        raise ValueError('"response" must be a string')
    row_id = str(obj.get("id") or f"line-{number}")
    session = obj.get("session_id", obj.get("conversation_id"))
    return DatasetRow(
        id=row_id,
        session=str(session) if session not in (None, "") else row_id,
        prompt=tuple(messages),
        response=response,
        source="upload",
    )


def _jsonl_records(body: str) -> list[tuple[int, Any]]:
    records, errors = [], []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not valid JSON ({exc.msg})")
        except RecursionError:
            errors.append(f"line {number}: not valid JSON (nested too deep)")
    _raise_errors(errors)
    return records


def _csv_records(body: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(body))
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise DatasetError('the CSV needs a header line with a "prompt" column')
    records = []
    for row in reader:
        # reader.line_num is the last physical line read: a quoted field may span lines.
        records.append((reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}))
    return records


def _raise_errors(errors: list[str]) -> None:
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        tail = f"\n... and {more} more" if more else ""
        raise DatasetError(
            f"{len(errors)} bad line(s) in the upload; nothing was written:\n"
            + "\n".join(shown)
            + tail
        )


def read_upload(name: str, data: bytes) -> Selected:
    """Rows from an uploaded .jsonl or .csv file; every bad line is reported with its number
    and nothing is returned unless the whole file is good."""
    try:
        body = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not UTF-8 text (byte {exc.start})") from exc
    lower = name.lower()
    if lower.endswith(".csv"):
        records = _csv_records(body)
    elif lower.endswith((".jsonl", ".json", ".ndjson")):
        records = _jsonl_records(body)
    else:
        raise DatasetError(f"{name}: upload a .jsonl or .csv file")
    rows, errors = [], []
    for number, obj in records:
        # Text PostgreSQL cannot store (a NUL, a lone surrogate) is refused with its line,
        # not met when the dataset's rows or card are written.
        bad = bad_text_at(obj)
        if bad is not None:
            errors.append(f"line {number}: {bad}")
            continue
        try:
            rows.append(_row_from_object(obj, number))
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
    _raise_errors(errors)
    if not rows:
        raise DatasetError(f"{name}: the file holds no records")
    source = {
        "type": "upload",
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "records": len(rows),
    }
    return Selected(rows, source)
