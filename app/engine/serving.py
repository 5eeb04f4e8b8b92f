"""How one model replica runs in llama.cpp: the one definition of the serving parameters.

Deployments (what operators ask for, one row each), the supervisor (which starts workers
with them), `herd worker` (whose flags are generated from the fields below) and the engine's
loader all derive from ServingParams: a new parameter is added here, once, with its default,
its help text and its check. Free of llama_cpp, so pages and the CLI import it cheaply.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from app.common.bounds import Bound
from app.engine.lookup_drafts import MAX_DRAFT
from app.engine.pooling import POOLING_CHOICES, Pooling, parse_pooling

DEFAULT_N_CTX = 4096
# Past any model's trained context (2^24 tokens) and past llama.cpp's sequence limit (256).
N_CTX = Bound(0, 1 << 24, "tokens per slot; 0: the model's trained context")
PARALLEL = Bound(0, 256, "slots; 0: chosen from free memory")
N_GPU_LAYERS = Bound(-1, 100_000, "layers; -1: all of them")
THREADS = Bound(1, 1024, "or unset for llama.cpp's default")
MAIN_GPU = Bound(0, 255, "a GPU index")
LOOKUP_DRAFTS = Bound(0, 64, "draft tokens; 0: off")
# GPUs a tensor split shares a model between.
TENSOR_SPLIT_GPUS = Bound(1, 128)


def parse_tensor_split(text: str) -> tuple[float, ...]:
    """'3,1' -> (3.0, 1.0): the share of the model each GPU gets, as llama.cpp takes it."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"tensor split {text!r} is not comma-separated numbers") from None
    if any(p < 0 for p in parts) or not any(p > 0 for p in parts):
        raise ValueError(f"tensor split {text!r} needs shares >= 0, at least one above 0")
    return parts


def _format_tensor_split(value: tuple[float, ...]) -> str:
    return ",".join(f"{x:g}" for x in value)


def _param(
    default: Any,
    help_text: str,
    *,
    parse: Callable[[str], Any] | None = None,
    show: Callable[[Any], str] = str,
    bound: Bound | None = None,
    label: str | None = None,
    step: int = 1,
    choices: tuple[str, ...] | None = None,
    needs: str | None = None,
) -> Any:
    """A serving parameter: its default, how its `herd worker` flag reads and writes it, the
    range of its value (a number's; None for the others), and how the Deployments form shows
    it: its label (None: not in the form, set through herd.yaml or the admin API), the
    step of its number input, its choices, and the switch it only applies with (needs)."""
    return field(
        default=default,
        metadata={
            "help": help_text,
            "parse": parse,
            "show": show,
            "bound": bound,
            "label": label,
            "step": step,
            "choices": choices,
            "needs": needs,
        },
    )


@dataclass(frozen=True, kw_only=True)
class ServingParams:
    """llama.cpp's settings for one replica. 0 for n_ctx and parallel means "choose": the
    model's trained context, and as many slots (up to 4) as the host's memory holds."""

    n_gpu_layers: int = _param(
        0,
        "layers to offload to the GPU; -1: all (default 0)",
        bound=N_GPU_LAYERS,
        label="GPU layers (-1 = all)",
    )
    n_ctx: int = _param(
        DEFAULT_N_CTX,
        f"context window in tokens, per slot (default {DEFAULT_N_CTX}; 0: the model's "
        "trained context; above it: capped to it)",
        bound=N_CTX,
        label="Context (n_ctx)",
        step=256,
    )
    parallel: int = _param(
        0,
        "generation slots batched together (default 0: 4, or fewer if their KV cache "
        "would not fit in free memory)",
        bound=PARALLEL,
        label="Parallel slots",
    )
    threads: int | None = _param(
        None,
        "CPU threads (default: llama.cpp's choice)",
        parse=int,
        bound=THREADS,
        label="Threads (0 = auto)",
    )
    main_gpu: int = _param(0, "GPU for the model (default 0)", bound=MAIN_GPU)
    tensor_split: tuple[float, ...] | None = _param(
        None,
        "share of the model per GPU, e.g. 3,1",
        parse=parse_tensor_split,
        show=_format_tensor_split,
    )
    embeddings: bool = _param(
        False,
        "serve POST /v1/embeddings (only) with this model, n_ctx tokens per decode",
        label="Serve embeddings",
    )
    pooling: Pooling = _param(
        "model",
        "with --embeddings: model (the GGUF's own; mean if it names none), mean, cls, last",
        parse=parse_pooling,
        label="Pooling",
        choices=POOLING_CHOICES,
        needs="embeddings",
    )
    lookup_drafts: int = _param(
        MAX_DRAFT,
        f"prompt-lookup draft tokens a request may try per step (default {MAX_DRAFT}; 0: "
        "off). A speed-up where answers copy the prompt; the output is the same either way",
        bound=LOOKUP_DRAFTS,
    )

    def serving_problems(self) -> list[str]:
        """What is wrong with these values, each as a sentence; empty when they are fine."""
        problems = []
        for f in fields(ServingParams):
            bound = f.metadata["bound"]
            problem = bound.problem(f.name, getattr(self, f.name)) if bound else None
            if problem is not None:
                problems.append(problem)
        if self.tensor_split is not None and not (
            all(math.isfinite(x) and x >= 0 for x in self.tensor_split)
            and sum(self.tensor_split) > 0
        ):
            problems.append(
                "tensor_split needs non-negative proportions, one per GPU, not all zero"
            )
        if self.tensor_split is not None and len(self.tensor_split) > TENSOR_SPLIT_GPUS.high:
            problems.append(f"tensor_split names at most {TENSOR_SPLIT_GPUS.high} GPUs")
        if self.pooling not in POOLING_CHOICES:
            choices = ", ".join(POOLING_CHOICES)
            problems.append(f"pooling is one of {choices}, not {self.pooling!r}")
        return problems

    def serving_params(self) -> ServingParams:
        """Just the serving parameters of this (possibly larger) object."""
        return ServingParams(**self.serving_values())

    def serving_values(self) -> dict[str, Any]:
        """The parameters by name, as the `deployments` table's columns hold them."""
        return {f.name: getattr(self, f.name) for f in fields(ServingParams)}

    def worker_flags(self) -> list[str]:
        """The `herd worker` flags that reproduce these values (defaults left out)."""
        argv: list[str] = []
        for f in fields(ServingParams):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag)
            else:
                argv += [flag, f.metadata["show"](value)]
        return argv


# Column names in the `deployments` table, flag names (with dashes) for `herd worker`.
SERVING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ServingParams))


def serving_field(name: str) -> Field[Any]:
    """The definition of one serving parameter: its default, and its metadata (see
    _param)."""
    for f in fields(ServingParams):
        if f.name == name:
            return f
    raise KeyError(f"no serving parameter {name!r}")


def add_serving_flags(parser: argparse.ArgumentParser) -> None:
    """The `herd worker` flags, one per ServingParams field, with its default and help."""
    for name in SERVING_FIELDS:
        add_serving_flag(parser, name)


def add_serving_flag(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    flag: str | None = None,
    default: Any = MISSING,
    help: str | None = None,
) -> None:
    """One ServingParams field as a flag, read and checked as the field's own flag is.

    A command that uses the value for something other than serving (`herd eval`'s context,
    the memory estimate of `herd models list`) may name the flag, its default and its help
    its own way; the type and parsing still come from the field."""
    f = serving_field(name)
    flag = flag or "--" + name.replace("_", "-")
    help_text = f.metadata["help"] if help is None else help
    if f.default is False:
        parser.add_argument(flag, action="store_true", help=help_text)
        return
    parse = f.metadata["parse"] or type(f.default)
    parser.add_argument(
        flag,
        # A plain int keeps argparse's own message ("invalid int value: 'x'").
        type=parse if parse is int else _flag_parser(parse),
        default=f.default if default is MISSING else default,
        help=help_text,
    )


def _flag_parser(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """parse, with its ValueError's message shown by argparse (not "invalid value")."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse_flag


def serving_values_from(source: object) -> dict[str, Any]:
    """The ServingParams values held by parsed flags, an ORM row (attributes) or a mapping
    (a SQL row), as ServingParams takes them (tensor_split as a tuple)."""
    get = source.get if isinstance(source, Mapping) else lambda name: getattr(source, name)
    values = {f.name: get(f.name) for f in fields(ServingParams)}
    if values["tensor_split"] is not None:
        values["tensor_split"] = tuple(float(x) for x in values["tensor_split"])
    values["pooling"] = parse_pooling(str(values["pooling"]))
    return values
