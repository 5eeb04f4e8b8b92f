"""Which logged requests are real user turns, the only rows training data is made of:
defined once, as SQL over `requests r`, for datasets, `herd export` and evaluation
references.

A row is left out for the first rule that applies, in RULES' order: its traffic class
(a batch line, demo traffic: nobody typed it), cancelled (the client went away before the
answer ended), an error (the call failed or was refused), cut (the answer stopped at
max_tokens, finish_reason 'length'). Synthetic rows and cut answers come in on request
(the bind parameters :include_synthetic and :include_cut, see Eligibility).

ELIGIBLE is the predicate; EXCLUDED_BY names the rule that leaves a row out (NULL for an
eligible row); both are built from RULES, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from app.analytics.traffic import TrafficClass
from app.db.bind import Bind, connect

# finish_reason of an answer that stopped at max_tokens (OpenAI's name, llama.cpp's too).
CUT = "length"


@dataclass(frozen=True)
class Rule:
    """One reason a row is not a real user turn: its name in breakdowns and on dataset
    cards, what it means, the SQL that is true for such a row (never NULL), and the bind
    parameter that lets such rows in when it is true (None: never)."""

    reason: str
    description: str
    sql: str
    option: str | None = None


# What each class other than live means on a dataset card (by value: a class added later
# is left out all the same, described by its name).
_CLASS_RULES = {
    "batch": "a line of a batch (no user waited for it)",
    "synthetic": "demo traffic (herd demo-traffic)",
    "evaluation": "a call an evaluation made",
}

RULES: tuple[Rule, ...] = (
    *(
        Rule(
            c.value,
            _CLASS_RULES.get(c.value, f"{c.value} traffic"),
            f"r.traffic_class = '{c.value}'",
            "include_synthetic" if c is TrafficClass.SYNTHETIC else None,
        )
        for c in TrafficClass
        if c is not TrafficClass.LIVE
    ),
    Rule("cancelled", "the client went away before the answer ended", "r.status = 'cancelled'"),
    Rule("error", "the call failed or was refused", "r.status NOT IN ('ok', 'cancelled')"),
    Rule(
        "cut",
        "the answer stopped at max_tokens (finish_reason 'length')",
        f"coalesce(r.finish_reason = '{CUT}', false)",
        "include_cut",
    ),
)
REASONS = tuple(rule.reason for rule in RULES)
RULE_OF = {rule.reason: rule for rule in RULES}


def _applies(rule: Rule) -> str:
    """SQL true when rule leaves the row out, given the bound options."""
    if rule.option is None:
        return f"({rule.sql})"
    return f"(NOT CAST(:{rule.option} AS boolean) AND ({rule.sql}))"


# The predicate: a real user turn (binds :include_synthetic, :include_cut).
ELIGIBLE = "(" + " AND ".join(f"NOT {_applies(rule)}" for rule in RULES) + ")"
# The reason a row is left out; NULL when it is eligible.
EXCLUDED_BY = (
    "CASE " + " ".join(f"WHEN {_applies(rule)} THEN '{rule.reason}'" for rule in RULES) + " END"
)


@dataclass(frozen=True)
class Eligibility:
    """Which of the includable kinds of rows a selection asks for."""

    include_synthetic: bool = False
    include_cut: bool = False

    def params(self) -> dict[str, Any]:
        return {"include_synthetic": self.include_synthetic, "include_cut": self.include_cut}


@dataclass(frozen=True)
class Breakdown:
    """The rows a selection's other filters matched: how many are eligible, and how many
    each rule in force left out (in RULES' order, zeros included; a rule whose rows the
    selection asked for is absent)."""

    matched: int = 0
    excluded: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    @property
    def eligible(self) -> int:
        return self.matched - sum(self.excluded.values())

    def summary(self) -> str:
        """'20 batch, 1 cancelled, 1 cut': the reasons that left rows out; 'none'."""
        return ", ".join(f"{n} {reason}" for reason, n in self.excluded.items() if n) or "none"


def breakdown(bind: Bind, matched: str, params: dict[str, Any]) -> Breakdown:
    """Count a selection's rows per reason. matched is its FROM ... WHERE ... (over
    `requests r`, without ELIGIBLE, no ORDER BY or LIMIT); params binds it and the
    options (Eligibility.params)."""
    sql = text(f"SELECT {EXCLUDED_BY} AS reason, count(*) AS n {matched} GROUP BY 1")
    with connect(bind) as conn:
        rows = conn.execute(sql, params).all()
    excluded = {r.reason: 0 for r in RULES if r.option is None or not params[r.option]}
    total = 0
    for reason, n in rows:
        total += int(n)
        if reason is not None:
            excluded[str(reason)] = int(n)
    return Breakdown(total, excluded)
