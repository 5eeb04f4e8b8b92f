"""Deterministic train/validation/test splits that keep each conversation in one split."""

from __future__ import annotations

import random
from dataclasses import dataclass

from app.datasets.rows import DatasetError, DatasetRow

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitRatios:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        values = (self.train, self.validation, self.test)
        if any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
            raise DatasetError("split ratios are >= 0 and add up to 1 (e.g. 0.8,0.1,0.1)")

    @classmethod
    def parse(cls, text: str) -> SplitRatios:
        """ "0.8,0.1,0.1" (train, validation, test)."""
        try:
            train, validation, test = (float(x) for x in text.split(","))
        except ValueError as exc:
            raise DatasetError(
                f"split ratios {text!r}: give three numbers, e.g. 0.8,0.1,0.1"
            ) from exc
        return cls(train, validation, test)


def split_rows(
    rows: list[DatasetRow], ratios: SplitRatios, seed: int
) -> dict[str, list[DatasetRow]]:
    """Rows by split. Conversations (sessions) are shuffled with the seed, then cut by their
    cumulative row count at the ratios: which split a conversation lands in depends only on
    the seed and the conversations (their ids and sizes), never on the row order, and no
    conversation straddles two splits. A conversation's rows keep their order."""
    sessions: dict[str, list[DatasetRow]] = {}
    for row in rows:
        sessions.setdefault(row.session, []).append(row)
    order = sorted(sessions)
    random.Random(seed).shuffle(order)
    out: dict[str, list[DatasetRow]] = {name: [] for name in SPLITS}
    total = len(rows)
    cut_train = ratios.train * total
    cut_validation = (ratios.train + ratios.validation) * total
    done = 0
    for key in order:
        group = sessions[key]
        # A conversation goes where its first row falls on the cumulative scale.
        if done < cut_train:
            name = "train"
        elif done < cut_validation:
            name = "validation"
        else:
            name = "test"
        if name == "test" and ratios.test == 0:
            name = "validation" if ratios.validation else "train"
        out[name].extend(group)
        done += len(group)
    return out
