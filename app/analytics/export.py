"""Training datasets from feedback: SFT and preference JSON lines, with a dataset card.

SFT lines are {"messages": [...]} (the chat format trainers such as TRL read) from
positively rated responses. Preference lines are {"prompt", "chosen", "rejected", "source"}
in TRL's conversational preference format, from (a) responses to the identical prompt that
users rated differently and (b) thumbs-down answers an operator corrected. Text is
redacted, exact duplicates are dropped, and a Markdown card beside the file records counts,
filters and the date range. Only real user turns are read (app/analytics/eligible.py);
the card counts the rows left out per reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, TextClause, text

from app.analytics.eligible import ELIGIBLE, Breakdown, Eligibility, breakdown
from app.analytics.redact import redact_messages, redact_text

ExportProgress = Callable[[int, int], None]
ROLES = {"system", "user", "assistant", "tool"}


class DatasetKind(StrEnum):
    SFT = "sft"
    PREFERENCE = "preference"


class ExportError(ValueError):
    """An export that cannot run as asked."""


@dataclass(frozen=True)
class ExportFilter:
    """Which rated requests an export reads; empty tuples and None mean 'any'."""

    start: datetime | None = None
    end: datetime | None = None
    model_ids: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()
    # SFT: the least net rating (sum of +1/-1 votes) a response needs.
    min_rating: int = 1
    include_synthetic: bool = False
    # Answers that stopped at max_tokens (finish_reason 'length'): left out unless asked.
    include_cut: bool = False
    redact: bool = True

    def params(self) -> dict[str, Any]:
        eligibility = Eligibility(self.include_synthetic, self.include_cut)
        return {
            "start": self.start,
            "end": self.end,
            "model_ids": list(self.model_ids),
            "aliases": list(self.aliases),
            "min_rating": self.min_rating,
            **eligibility.params(),
        }

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("start", "end"):
            out[key] = out[key].isoformat() if out[key] else None
        out["model_ids"], out["aliases"] = list(self.model_ids), list(self.aliases)
        return out


@dataclass
class ExportResult:
    """What an export wrote."""

    kind: DatasetKind
    path: Path
    card_path: Path
    records: int = 0
    duplicates: int = 0
    skipped: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    first_at: datetime | None = None
    last_at: datetime | None = None
    # The rated rows the export matched, and those left out as no real user turn.
    excluded: Breakdown = field(default_factory=Breakdown)


# Which logged requests a selection reads (ExportFilter.params), before the eligibility
# predicate (ELIGIBLE) is applied; app/datasets shares it.
SCOPE_FILTERS = """
      (CAST(:start AS timestamptz) IS NULL OR r.created_at >= :start)
  AND (CAST(:end AS timestamptz) IS NULL OR r.created_at < :end)
  AND (cardinality(CAST(:model_ids AS bigint[])) = 0 OR r.model_id = ANY(:model_ids))
  AND (cardinality(CAST(:aliases AS text[])) = 0 OR r.alias = ANY(:aliases))
"""
ANSWERED = SCOPE_FILTERS + "  AND coalesce(msg.response, '') <> ''\n"
REQUEST_FILTERS = ANSWERED + f"  AND {ELIGIBLE}\n"
# Each rated request's net rating (the sum of its +1/-1 votes).
NET_RATINGS = "(SELECT request_id, sum(rating) AS net FROM feedback GROUP BY request_id)"

# The rows each kind reads, eligible or not (what the card's breakdown counts).
SFT_MATCHED = f"""
    FROM {NET_RATINGS} f
    JOIN requests r ON r.id = f.request_id
    JOIN messages msg ON msg.request_id = r.id
    WHERE f.net >= :min_rating AND {ANSWERED}
"""
PREFERENCE_MATCHED = f"""
    FROM requests r
    JOIN messages msg ON msg.request_id = r.id
    LEFT JOIN {NET_RATINGS} f ON f.request_id = r.id
    WHERE {ANSWERED}
      AND (f.net <> 0 OR EXISTS (SELECT 1 FROM feedback_corrections c WHERE c.request_id = r.id)
           AND EXISTS (SELECT 1 FROM feedback v WHERE v.request_id = r.id AND v.rating = -1))
"""

SFT_SQL = f"""
    SELECT r.id, r.created_at, msg.prompt, msg.response
    {SFT_MATCHED} AND {ELIGIBLE}
"""

# Same prompt (identical messages), opposite net ratings: pair the k-th distinct liked
# answer with the k-th distinct disliked one, so a popular prompt yields a few pairs
# rather than a cross product.
PAIRS_SQL = f"""
    WITH rated AS (
      SELECT r.created_at, msg.prompt, msg.response, md5(msg.prompt::text) AS prompt_key,
             sign(f.net) AS side
      FROM {NET_RATINGS} f
      JOIN requests r ON r.id = f.request_id
      JOIN messages msg ON msg.request_id = r.id
      WHERE f.net <> 0 AND {REQUEST_FILTERS}
    ), answers AS (
      SELECT DISTINCT ON (prompt_key, side, md5(response)) *
      FROM rated ORDER BY prompt_key, side, md5(response), created_at DESC
    ), ranked AS (
      SELECT *, row_number() OVER (PARTITION BY prompt_key, side ORDER BY created_at DESC) AS k
      FROM answers
    )
    SELECT greatest(c.created_at, x.created_at) AS created_at, c.prompt,
           c.response AS chosen, x.response AS rejected, 'same_prompt' AS source
    FROM ranked c JOIN ranked x ON x.prompt_key = c.prompt_key AND x.k = c.k
    WHERE c.side = 1 AND x.side = -1
    UNION ALL
    SELECT r.created_at, msg.prompt, c.response AS chosen, msg.response AS rejected,
           'correction' AS source
    FROM feedback_corrections c
    JOIN requests r ON r.id = c.request_id
    JOIN messages msg ON msg.request_id = r.id
    WHERE EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = r.id AND f.rating = -1)
      AND {REQUEST_FILTERS}
"""


def _count(sql: str) -> TextClause:
    return text(f"SELECT count(*) FROM ({sql}) q")


def _content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: keep the text ones
        parts = [p.get("text") for p in value if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str)) or None
    return None


def prompt_messages(prompt: Any) -> list[dict[str, str]] | None:
    """The stored prompt as a clean list of {role, content}; None when it is not chat-like."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}] if prompt else None
    if not isinstance(prompt, list) or not prompt:
        return None
    out = []
    for message in prompt:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return None
        content = _content(message.get("content"))
        if content is None:
            return None
        out.append({"role": str(message["role"]), "content": content})
    return out


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def stream_rows(engine: Engine, sql: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=2000).execute(
            text(sql), params
        )
        for row in result.mappings():
            yield dict(row)


def _sft_record(row: dict[str, Any], redact: bool) -> dict[str, Any] | None:
    messages = prompt_messages(row["prompt"])
    if messages is None:
        return None
    messages = [*messages, {"role": "assistant", "content": row["response"]}]
    return {"messages": redact_messages(messages) if redact else messages}


def _preference_record(row: dict[str, Any], redact: bool) -> dict[str, Any] | None:
    prompt = prompt_messages(row["prompt"])
    if prompt is None or row["chosen"] == row["rejected"]:
        return None
    chosen, rejected = row["chosen"], row["rejected"]
    if redact:
        prompt = redact_messages(prompt)
        chosen, rejected = redact_text(chosen), redact_text(rejected)
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "source": row["source"],
    }


def export_dataset(
    engine: Engine,
    kind: DatasetKind,
    path: Path,
    filters: ExportFilter | None = None,
    progress: ExportProgress | None = None,
) -> ExportResult:
    """Write the dataset to path (JSON lines) and its card beside it."""
    f = filters or ExportFilter()
    if kind is DatasetKind.SFT and f.min_rating < 1:
        raise ExportError("SFT data comes from positively rated responses: min_rating >= 1")
    sql = SFT_SQL if kind is DatasetKind.SFT else PAIRS_SQL
    make = _sft_record if kind is DatasetKind.SFT else _preference_record
    params = f.params()
    with engine.connect() as conn:
        total = int(conn.execute(_count(sql), params).scalar_one())
    path.parent.mkdir(parents=True, exist_ok=True)
    matched = SFT_MATCHED if kind is DatasetKind.SFT else PREFERENCE_MATCHED
    result = ExportResult(kind, path, card_path(path), excluded=breakdown(engine, matched, params))
    seen: set[str] = set()
    # Written under a temporary name, renamed when complete: no half dataset on failure.
    partial = path.with_name(path.name + ".partial")
    done = 0
    with partial.open("w", encoding="utf-8") as out:
        for row in stream_rows(engine, sql, params):
            done += 1
            record = make(row, f.redact)
            if record is None:
                result.skipped += 1
            else:
                digest = _digest(record)
                if digest in seen:
                    result.duplicates += 1
                else:
                    seen.add(digest)
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    result.records += 1
                    result.sources[str(record.get("source", "rated"))] += 1
                    at = row["created_at"]
                    result.first_at = at if result.first_at is None else min(result.first_at, at)
                    result.last_at = at if result.last_at is None else max(result.last_at, at)
            if progress is not None and (done % 500 == 0 or done == total):
                progress(done, total)
    os.replace(partial, path)
    write_card(result, f)
    if progress is not None:
        progress(total, total)
    return result


def card_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.card.md")


def write_card(result: ExportResult, filters: ExportFilter) -> None:
    """A Markdown dataset card: what is in the file and how it was selected."""
    facts: dict[str, Any] = {
        "kind": result.kind.value,
        "file": result.path.name,
        "records": result.records,
        "duplicates_removed": result.duplicates,
        "skipped_unusable": result.skipped,
        # Rated rows that are no real user turn (batch, synthetic, cancelled, error, cut).
        "excluded": {k: v for k, v in result.excluded.excluded.items() if v},
        "by_source": dict(result.sources),
        "date_range": [
            result.first_at.isoformat() if result.first_at else None,
            result.last_at.isoformat() if result.last_at else None,
        ],
        "filters": filters.describe(),
        "redaction": "emails, phone numbers, card-like numbers" if filters.redact else "off",
        "created_at": datetime.now(UTC).isoformat(),
    }
    layout = (
        '{"messages": [{"role", "content"}, ...]} ending with the rated assistant answer'
        if result.kind is DatasetKind.SFT
        else '{"prompt": [messages], "chosen": [assistant], "rejected": [assistant], "source"}'
    )
    first, last = facts["date_range"]
    lines = [
        f"# Herd {result.kind.value} dataset: {result.path.name}",
        "",
        f"- records: {result.records} ({result.duplicates} duplicates removed, "
        f"{result.skipped} unusable rows skipped)",
        f"- date range of the source requests: {first or '-'} to {last or '-'}",
        f"- left out as no real user turn: {result.excluded.summary()}",
        f"- filters: {json.dumps(facts['filters'])}",
        f"- redaction: {facts['redaction']}",
        f"- line format: {layout}",
        "",
        "Load it with `datasets.load_dataset('json', data_files=...)`.",
        "",
        "```json",
        json.dumps(facts, indent=2),
        "```",
        "",
    ]
    result.card_path.write_text("\n".join(lines), encoding="utf-8")


def read_card(path: Path) -> dict[str, Any]:
    """The facts block of a card written by write_card."""
    body = path.read_text(encoding="utf-8")
    start = body.index("```json\n") + len("```json\n")
    facts: dict[str, Any] = json.loads(body[start : body.index("\n```", start)])
    return facts
