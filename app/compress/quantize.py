"""Quantize requests: checked before any job starts, then started as one job per type.

Everything that can be known before llama.cpp runs is refused here with a reason: a source
that is missing or not a valid GGUF, an unknown file type or one that needs an importance
matrix, requantizing a quantized source without allow_requantize, layer indexes outside the
model, a target that already exists, and too little free disk space.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.control.audit import Actor
from app.jobs.kinds import JobKind
from app.jobs.spawn import spawn_job
from app.jobs.store import JobStore
from app.store.catalog import ModelStore
from app.store.estimate import format_bytes
from app.store.gguf_file import InvalidGGUF, read_gguf

# File types whose tensors need an importance matrix (llama.cpp refuses them without one:
# "this quantization requires an imatrix"); Herd does not compute importance matrices.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS",
                           "Q2_K_S"})  # fmt: skip
UNQUANTIZED = frozenset({"F32", "F16", "BF16"})
# Bits per weight of each file type's main tensor type (ggml block sizes). llama.cpp keeps
# some tensors at higher precision (mixes, rows that do not fit a block), hence the margin.
_BITS_PER_WEIGHT = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_0": 5.5,
    "Q5_1": 6.0, "Q5_K_S": 5.5, "Q5_K_M": 5.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q4_K_S": 4.5,
    "Q4_K_M": 4.5, "IQ4_NL": 4.5, "IQ4_XS": 4.25, "Q3_K_S": 3.4375, "Q3_K_M": 3.4375,
    "Q3_K_L": 3.4375, "IQ3_S": 3.4375, "IQ3_M": 3.4375, "IQ3_XS": 3.4375, "Q2_K": 2.625,
    "TQ1_0": 1.6875, "TQ2_0": 2.0625, "MXFP4_MOE": 4.25,
}  # fmt: skip
SIZE_MARGIN = 1.3
SIZE_SLACK_BYTES = 16 * 1024 * 1024
_QUANT_SUFFIX = re.compile(r"\.(?:[A-Z]*Q\d[A-Z0-9_]*|F16|F32|BF16)$", re.IGNORECASE)


class QuantizeRefused(ValueError):
    """A quantize request that cannot work; the message says why and what to do."""


@dataclass(frozen=True)
class QuantizeRequest:
    """What an operator asked for: one source, one file type, options."""

    source: str
    ftype: str
    prune_layers: tuple[int, ...] = ()
    allow_requantize: bool = False
    nthread: int = 0

    def params(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ftype": self.ftype,
            "prune_layers": list(self.prune_layers),
            "allow_requantize": self.allow_requantize,
            "nthread": self.nthread,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> QuantizeRequest:
        return cls(
            source=str(params["source"]),
            ftype=str(params["ftype"]),
            prune_layers=tuple(int(i) for i in params.get("prune_layers") or ()),
            allow_requantize=bool(params.get("allow_requantize")),
            nthread=int(params.get("nthread") or 0),
        )


@dataclass(frozen=True)
class QuantizePlan:
    """A checked request: where the source is, what will be written, and the space it needs."""

    request: QuantizeRequest
    source_id: int
    source_path: Path
    source_type: str
    ftype_id: int
    target_name: str
    target_path: Path
    needed_bytes: int
    requantize: bool
    notes: list[str] = field(default_factory=list)


def parse_layers(text: str) -> tuple[int, ...]:
    """'3,7' -> (3, 7); QuantizeRefused for anything that is not a list of integers."""
    if not text.strip():
        return ()
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError as exc:
        raise QuantizeRefused(
            f"layers to prune are integers separated by commas: {text!r}"
        ) from exc


def llama_ftypes() -> dict[str, int]:
    """llama.cpp's output file types (imported here, so `herd` starts without llama.cpp)."""
    from app.engine.quantize import llama_ftypes as names

    return names()


def offered_ftypes() -> list[str]:
    """The file types Herd offers: what llama.cpp names, less those needing an imatrix."""
    return [name for name in llama_ftypes() if name not in NEEDS_IMATRIX]


def target_name(source_name: str, ftype: str, prune_layers: tuple[int, ...]) -> str:
    """SmolLM2.Q4_1.gguf, Q8_0 -> SmolLM2.Q8_0.gguf; pruned: SmolLM2.Q8_0.pruned-3-7.gguf."""
    stem = source_name[: -len(".gguf")] if source_name.lower().endswith(".gguf") else source_name
    stem = re.sub(r"\.pruned(-\d+)+$", "", stem)
    stem = _QUANT_SUFFIX.sub("", stem)
    pruned = ".pruned-" + "-".join(str(i) for i in prune_layers) if prune_layers else ""
    return f"{stem}.{ftype}{pruned}.gguf"


def estimated_size(parameter_count: int, ftype: str, overhead_bytes: int) -> int:
    """An upper estimate of the output file's size, for the disk-space check."""
    bits = _BITS_PER_WEIGHT.get(ftype, 16.0)
    weights = min(parameter_count * 4, int(parameter_count * bits / 8 * SIZE_MARGIN))
    return weights + overhead_bytes + SIZE_SLACK_BYTES


def plan_quantize(store: ModelStore, request: QuantizeRequest) -> QuantizePlan:
    """Check a request against the store and llama.cpp; QuantizeRefused with the reason."""
    row = store.get(request.source)
    if row is None:
        raise QuantizeRefused(f"no model {request.source!r} in the store")
    if row.status != "valid":
        raise QuantizeRefused(f"{row.name} is {row.status}: {row.error}")
    types = llama_ftypes()
    ftype = request.ftype.upper()
    if ftype not in types:
        raise QuantizeRefused(
            f"unknown file type {request.ftype!r}; llama.cpp offers: {', '.join(offered_ftypes())}"
        )
    if ftype in NEEDS_IMATRIX:
        raise QuantizeRefused(
            f"{ftype} needs an importance matrix (imatrix), which Herd does not compute; "
            "choose a K-quant such as Q4_K_M or Q3_K_M, or an IQ type without the need (IQ4_XS)"
        )
    source = Path(row.path)
    try:
        info = read_gguf(source)
    except (InvalidGGUF, OSError) as exc:
        raise QuantizeRefused(f"source {row.name} is not a valid GGUF: {exc}") from exc
    source_type = info.quantization or "?"
    requantize = source_type.upper() not in UNQUANTIZED
    if requantize and not request.allow_requantize:
        raise QuantizeRefused(
            f"{row.name} is already quantized ({source_type}); quantizing it again loses more "
            "quality than quantizing the original F16/F32 file. Allow requantizing to go on."
        )
    layers = info.block_count or 0
    bad = [i for i in request.prune_layers if not 0 <= i < layers]
    if bad:
        raise QuantizeRefused(
            f"layers {bad} are outside {row.name}'s {layers} layers (0..{layers - 1})"
        )
    if request.prune_layers and len(request.prune_layers) >= layers:
        raise QuantizeRefused(f"pruning all {layers} layers leaves no model")
    name = target_name(row.name, ftype, request.prune_layers)
    target = store.destination(name)
    if target.exists():
        raise QuantizeRefused(f"{name} already exists in the store")
    overhead = max(0, source.stat().st_size - info.tensor_bytes)
    kept = 1 - len(request.prune_layers) / layers if layers else 1.0
    needed = estimated_size(int(info.parameter_count * kept), ftype, overhead)
    notes = []
    if ftype in ("TQ1_0", "TQ2_0"):
        notes.append(f"{ftype} is meant for ternary (BitNet-style) models")
    return QuantizePlan(
        request=QuantizeRequest(
            request.source, ftype, request.prune_layers, request.allow_requantize, request.nthread
        ),
        source_id=row.id,
        source_path=source,
        source_type=source_type,
        ftype_id=types[ftype],
        target_name=name,
        target_path=target,
        needed_bytes=needed,
        requantize=requantize,
        notes=notes,
    )


def check_space(plans: list[QuantizePlan], free_bytes: int | None = None) -> None:
    """Refuse when the files planned for one folder need more than its free space."""
    by_folder: dict[Path, int] = {}
    for plan in plans:
        folder = plan.target_path.parent
        by_folder[folder] = by_folder.get(folder, 0) + plan.needed_bytes
    for folder, needed in by_folder.items():
        free = free_bytes if free_bytes is not None else shutil.disk_usage(_existing(folder)).free
        if needed > free:
            raise QuantizeRefused(
                f"not enough disk space in {folder}: needs about {needed} bytes "
                f"({format_bytes(needed)}), {free} bytes ({format_bytes(free)}) free"
            )


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def start_quantize(
    settings: Settings,
    store: ModelStore,
    jobs: JobStore,
    requests: list[QuantizeRequest],
    actor: Actor,
) -> list[int]:
    """Check every request, then start one detached job per request; the job ids.

    Nothing starts unless every request passes its checks. Each start is an audit_log row.
    """
    if not requests:
        raise QuantizeRefused("choose at least one file type")
    plans = [plan_quantize(store, request) for request in requests]
    names = [plan.target_name for plan in plans]
    if len(set(names)) != len(names):
        raise QuantizeRefused("the same output twice: " + ", ".join(names))
    jobs.reap_stale(settings.job_stale_s)
    busy = {job.params.get("target") for job in jobs.recent(JobKind.QUANTIZE) if not job.finished}
    for plan in plans:
        if plan.target_name in busy:
            raise QuantizeRefused(f"a job is already writing {plan.target_name}")
    check_space(plans)
    ids = []
    for plan in plans:
        params = {**plan.request.params(), "target": plan.target_name}
        job_id = jobs.start(JobKind.QUANTIZE, params, actor, "model.quantize")
        spawn_job(settings, job_id)
        ids.append(job_id)
    return ids
