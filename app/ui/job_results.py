"""A job's target and result as a person reads them: names joined, a sentence, and a table
where the job measured several things; never a dict or list repr.

Each kind's result (the dict its `run` returns, see app/jobs/kinds.py) is read by one
function here; a result of an unknown shape is written out as "key: value" phrases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.evaluation.metrics import UNITS, Metric
from app.jobs.kinds import JobKind
from app.store.estimate import format_bytes
from app.ui.tables import plain


@dataclass(frozen=True)
class ResultText:
    """A sentence about the result, and the rows of a table under it (none: no table)."""

    sentence: str
    table: list[dict[str, Any]] = field(default_factory=list)


def job_target(params: Mapping[str, Any]) -> str:
    """What a job works on, from its parameters: a model, a dataset, the models measured."""
    return plain(params.get("target") or params.get("models") or "")


def _quantized(result: Mapping[str, Any]) -> ResultText:
    size, source = result["size_bytes"], result.get("source_bytes")
    share = f" ({size / source:.0%} of the source's {format_bytes(source)})" if source else ""
    seconds = result.get("seconds")
    took = f" in {seconds:.{1 if seconds >= 1 else 2}f} s" if seconds is not None else ""
    sha = f"; sha256 {str(result['sha256'])[:12]}…" if result.get("sha256") else ""
    return ResultText(f"made {result['model']}, {format_bytes(size)}{share}{took}{sha}.")


def _metric_cell(metric: Metric, value: Any) -> Any:
    if value is None:
        return None
    if UNITS[metric] == "bytes":
        return format_bytes(value)
    return round(float(value), 3 if metric is Metric.PERPLEXITY else 1)


def _metric_column(metric: Metric) -> str:
    unit = UNITS[metric]
    name = metric.value.removesuffix("_bytes").removesuffix("_pct").removesuffix("_tps")
    name = name.replace("_", " ")
    return f"{name} ({unit})" if unit and unit != "bytes" else name


def _evaluated(result: Mapping[str, Any]) -> ResultText:
    models: Mapping[str, Mapping[str, Any]] = result["models"]
    settings: Mapping[str, Any] = result.get("settings") or {}
    table = []
    for name, values in models.items():
        row: dict[str, Any] = {"model": name}
        for metric in Metric:
            if metric.value in values:
                row[_metric_column(metric)] = _metric_cell(metric, values[metric.value])
        table.append(row)
    count = f"{len(models)} model" + ("" if len(models) == 1 else "s")
    how = [f"a context of {settings['n_ctx']:,} tokens"] if settings.get("n_ctx") else []
    if settings.get("threads"):
        how.append(f"{settings['threads']} threads")
    if settings.get("n_gpu_layers"):
        layers = settings["n_gpu_layers"]
        how.append("every layer on the GPU" if layers < 0 else f"{layers} layers on the GPU")
    if settings.get("text"):
        how.append(f"perplexity over {settings['text']}")
    if settings.get("answers"):
        how.append(f"{settings['answers']} prompts of '{settings.get('prompts')}' answered")
    return ResultText(f"measured {count}" + (f" with {', '.join(how)}" if how else "") + ".", table)


def _dataset(result: Mapping[str, Any]) -> ResultText:
    splits = plain(result.get("splits") or {})
    rows = f"{result['rows']:,} rows" + (f" ({splits})" if splits else "")
    where = f" in {result['path']}" if result.get("path") else ""
    kind = f"{result['kind']} " if result.get("kind") else ""
    return ResultText(f"built the {kind}dataset '{result['dataset']}': {rows}{where}.")


def _batch(result: Mapping[str, Any]) -> ResultText:
    return ResultText(
        f"batch {result['batch_id']} {result['status']}: {result.get('completed', 0):,} "
        f"completed, {result.get('failed', 0):,} failed."
    )


_BY_KIND: dict[JobKind, Callable[[Mapping[str, Any]], ResultText]] = {
    JobKind.QUANTIZE: _quantized,
    JobKind.EVALUATE: _evaluated,
    JobKind.DATASET: _dataset,
    JobKind.BATCH: _batch,
}


def describe_result(kind: str, result: Mapping[str, Any] | None) -> ResultText:
    """The result of a succeeded job of this kind, in words."""
    if not result:
        return ResultText("done.")
    try:
        return _BY_KIND[JobKind(kind)](result)
    except (KeyError, ValueError, TypeError, AttributeError):
        # A kind without its own reader, or a result from an older version of the job.
        return ResultText("; ".join(f"{key.replace('_', ' ')}: {plain(value)}"
                                    for key, value in result.items()) + ".")  # fmt: skip
