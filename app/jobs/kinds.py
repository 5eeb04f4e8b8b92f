"""Job kinds: the names the jobs table holds, and the registry that says what runs each.

The jobs package knows no kind's code. A JobKinds registry, handed to run_job by the process
that runs jobs, maps each kind to its handler, `run(ctx) -> dict` (the job's result), by the
handler's module path: the module is imported only in the process running such a job, so a
page or command that starts a job never loads what the job needs."""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class JobKind(enum.StrEnum):
    QUANTIZE = "quantize"
    EVALUATE = "evaluate"
    BATCH = "batch"
    DATASET = "dataset"  # distillation or augmentation


# Takes the job's JobContext (app/jobs/runner.py), returns the job's result.
Handler = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class JobKinds:
    """The registry of job kinds: kind -> "module:function" of its handler, as the packages
    that define the kinds declare them."""

    handlers: Mapping[str, str]

    def handler_for(self, kind: str) -> Handler:
        """The function that runs jobs of this kind; ValueError for an unregistered kind."""
        path = self.handlers.get(kind)
        if path is None:
            raise ValueError(f"no job kind {kind!r} is registered")
        module, _, name = path.partition(":")
        run: Handler = getattr(importlib.import_module(module), name)
        return run
