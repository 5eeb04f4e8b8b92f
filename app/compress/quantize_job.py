"""The quantize job: runs in its own process (`herd jobs run ID`).

Progress: llama_model_quantize has no progress callback, but llama.cpp logs one line per
tensor as it starts it ("[  12/ 272] blk.1.attn_q.weight - ..."); the job reads those lines
from llama.cpp's log callback, so progress is tensors started / tensors, scaled to 95%; the
last 5% are validating and hashing the new file.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

from app.compress.quantize import QuantizeRefused, QuantizeRequest, check_space, plan_quantize
from app.engine.quantize import QuantizeError, llama_cpp_version, quantize_file
from app.jobs.runner import JobContext, JobFailed
from app.store.catalog import ModelStore, ModelStoreError

_TENSOR_LINE = re.compile(r"^\[\s*(\d+)\s*/\s*(\d+)\s*\]\s*(\S+)")
QUANTIZE_SHARE = 0.95


def scratch_path(target: Path, job_id: int) -> Path:
    """The job's temporary output: beside the target (same file system, so the final link is
    atomic), hidden, and not ending in .gguf, so a store scan never lists it."""
    return target.parent / f".job-{job_id}-{target.name}.partial"


def run(ctx: JobContext) -> dict[str, Any]:
    store = ModelStore(ctx.db.engine, ctx.settings.models_path)
    request = QuantizeRequest.from_params(ctx.params)
    try:
        plan = plan_quantize(store, request)
        check_space([plan])
    except (QuantizeRefused, ModelStoreError) as exc:
        raise JobFailed(str(exc)) from exc
    tmp = scratch_path(plan.target_path, ctx.job.id)
    ctx.add_scratch(tmp)
    ctx.log(
        f"quantizing {request.source} ({plan.source_type}) to {plan.request.ftype} -> "
        f"{plan.target_name}" + (f", pruning layers {list(request.prune_layers)}"
                                 if request.prune_layers else "")
    )  # fmt: skip

    def on_line(line: str) -> None:
        match = _TENSOR_LINE.match(line)
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            ctx.set_progress(QUANTIZE_SHARE * (done - 1) / max(total, 1))
            if done == total or done % 25 == 1:
                ctx.log(f"tensor {done}/{total} {match.group(3)}")
        elif "error" in line.lower() or "quant size" in line or "model size" in line:
            ctx.log(line.strip())

    started = time.monotonic()
    try:
        quantize_file(
            plan.source_path,
            tmp,
            plan.ftype_id,
            allow_requantize=request.allow_requantize,
            prune_layers=request.prune_layers,
            nthread=request.nthread,
            on_line=on_line,
        )
    except QuantizeError as exc:
        free = shutil.disk_usage(tmp.parent).free
        raise JobFailed(f"llama.cpp could not quantize: {exc} ({free} bytes free)") from exc
    seconds = time.monotonic() - started
    ctx.check_cancel()
    ctx.set_progress(QUANTIZE_SHARE)
    ctx.log(f"quantized in {seconds:.1f} s; validating and hashing")
    recipe = {
        "ftype": plan.request.ftype,
        "source_type": plan.source_type,
        "pruned_layers": list(request.prune_layers),
        "requantized": plan.requantize,
        "llama_cpp": llama_cpp_version(),
        "job_id": ctx.job.id,
        "seconds": round(seconds, 3),
    }
    lineage = {"parent_id": plan.source_id, "recipe": recipe, "created_by": ctx.job.started_by}
    try:
        with ctx.committing():
            model = store.place(tmp, plan.target_name, lineage)
    except ModelStoreError as exc:
        raise JobFailed(str(exc)) from exc
    ctx.log(f"added {model.name}: {model.size_bytes} bytes, sha256 {model.sha256}")
    return {
        "model_id": model.id,
        "model": model.name,
        "size_bytes": model.size_bytes,
        "sha256": model.sha256,
        "seconds": round(seconds, 3),
        "source_bytes": plan.source_path.stat().st_size,
    }
