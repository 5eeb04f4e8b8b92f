"""The dataset card: README.md (for people and the Hugging Face hub) and card.json (facts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LINE_FORMAT = (
    '{"messages": [{"role", "content"}, ...] (ending with the assistant answer when there is '
    'one), "id", "session_id", "source", "synthetic", "parent_id"}'
)


def _front_matter(files: dict[str, str]) -> list[str]:
    """YAML the `datasets` library reads: `load_dataset(DIR)` then finds the splits."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split, file in files.items():
        lines += [f"  - split: {split}", f"    path: {file}"]
    return [*lines, "---"]


def render_readme(card: dict[str, Any]) -> str:
    """The card as Markdown: what the files hold and how they were made, step by step."""
    lines = _front_matter(card["files"])
    lines += [
        "",
        f"# {card['name']} ({card['kind']} dataset, made by Herd)",
        "",
        f"- created by {card['created_by']} at {card['created_at']}",
        f"- source: `{json.dumps(card['source'], ensure_ascii=False)}`",
        f"- rows per split: {', '.join(f'{k} {v}' for k, v in card['split_rows'].items())}"
        f" (seed {card['seed']}, ratios {card['ratios']}; a conversation stays in one split)",
        f"- line format: {LINE_FORMAT}",
    ]
    if card.get("excluded") is not None:
        left_out = ", ".join(f"{n} {reason}" for reason, n in card["excluded"].items() if n)
        lines.append(
            f"- logged rows left out as no real user turn: {left_out or 'none'} (reasons "
            f"applied: {', '.join(card['excluded'])}; the `excluded_*` steps below)"
        )
    if card.get("held_out_prompts"):
        lines.append(
            f"- held-out prompts with their answers as references: `{card['held_out_prompts']}` "
            "(the prompt-set format of `herd eval --prompts FILE`: score a student and its "
            "teacher on rows the student was not trained on)"
        )
    if card.get("teacher"):
        lines.append(f"- teacher: `{json.dumps(card['teacher'], ensure_ascii=False)}`")
    if card.get("augmentation"):
        lines.append(f"- augmentation: `{json.dumps(card['augmentation'], ensure_ascii=False)}`")
    lines += [
        "",
        "## Steps",
        "",
        "| step | what it does | rows in | removed | changed | rows out |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in card["steps"]:
        lines.append(
            f"| {s['step']} | {s['description']} | {s['rows_in']} | {s['removed']} | "
            f"{s['changed']} | {s['rows_out']} |"
        )
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        f"ds = load_dataset('json', data_files={card['files']!r})",
        "```",
        "",
        "## Facts (card.json)",
        "",
        "```json",
        json.dumps(card, indent=2, ensure_ascii=False),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(directory: Path, card: dict[str, Any]) -> None:
    (directory / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (directory / "README.md").write_text(render_readme(card), encoding="utf-8")


def read_card(directory: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((directory / "card.json").read_text(encoding="utf-8"))
    return card
