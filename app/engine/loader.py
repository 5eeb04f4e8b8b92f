"""Load a GGUF into llama.cpp and describe what was loaded (layers offloaded, context)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from app.engine.cpu_buffers import ExtraBuffers, new_llama
from app.engine.errors import BadRequest, ModelLoadError, PromptTooLong
from app.engine.llama_log import LlamaLog
from app.engine.protocol import EngineInfo
from app.engine.requests import GenerationRequest
from app.engine.serving import ServingParams
from app.engine.tool_prompt import message_dicts, render_with_tools

logger = logging.getLogger(__name__)

# Lines of llama.cpp's log that only repeat the reason given on an earlier line.
_GENERIC_ERRORS = ("failed to load model", "llama_model_load_from_file_impl")


@dataclass(frozen=True)
class LoadOptions(ServingParams):
    """Which file to load, and how (ServingParams; parallel 0 loads one slot: the worker
    resolves "choose from memory" before it loads)."""

    model_path: Path
    # llama.cpp's extra CPU buffer types (app/engine/cpu_buffers.py): auto unless set.
    extra_buffers: ExtraBuffers = ExtraBuffers.AUTO


@dataclass(frozen=True)
class PreparedPrompt:
    """A request turned into tokens, with the stop strings the template adds."""

    tokens: list[int]
    stop: tuple[str, ...]


def gpu_offload_supported() -> bool:
    """Whether this llama-cpp-python build can put layers on a GPU at all."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def layers_offloaded(n_gpu_layers: int, n_layer: int, supported: bool) -> int:
    """Layers llama.cpp puts on the GPU: the repeating layers plus the output layer."""
    if not supported:
        return 0
    all_layers = n_layer + 1
    return all_layers if n_gpu_layers < 0 else min(n_gpu_layers, all_layers)


def chat_formatter(llama: Any) -> Jinja2ChatFormatter | None:
    """The formatter llama-cpp-python builds from the GGUF's chat template; None without one."""
    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    return Jinja2ChatFormatter(
        template=template,
        eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
    )


def _load_reason(log: LlamaLog, exc: BaseException) -> str:
    lines = [line for line in log.errors() if not any(g in line for g in _GENERIC_ERRORS)]
    # "llama_model_load: error loading model: X" -> "X": the operator needs the reason.
    reasons = [line.split("error loading model: ", 1)[-1] for line in lines]
    return "; ".join(dict.fromkeys(reasons)) or str(exc) or type(exc).__name__


class LoadedModel:
    """One llama_cpp.Llama and what the engine needs around it; used by one thread at a time."""

    def __init__(self, llama: Any, info: EngineInfo, log: LlamaLog) -> None:
        self.llama = llama
        self.info = info
        self._log = log
        # Kept here so the prompt is tokenized (and checked against n_ctx) before it is queued.
        self._formatter = chat_formatter(llama)

    def prepare(self, request: GenerationRequest) -> PreparedPrompt:
        """Apply the chat template and tokenize; raises BadRequest or PromptTooLong."""
        if request.messages is not None:
            if self._formatter is None:
                raise BadRequest(
                    "this model's GGUF has no chat template; use /v1/completions with a prompt"
                )
            formatter = self._formatter
            rendered: list[Any] = []

            def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
                formatted = formatter(messages=messages, tools=tools)  # type: ignore[arg-type]
                rendered.append(formatted)
                return formatted.prompt

            try:
                if request.tools is not None:
                    prompt = render_with_tools(request.messages, json.loads(request.tools), render)
                else:
                    prompt = render(message_dicts(request.messages, native=True), None)
            except Exception as exc:  # the template's raise_exception and Jinja errors
                raise BadRequest(
                    f"the model's chat template refused the messages: {exc}", param="messages"
                ) from exc
            formatted = rendered[-1]
            tokens = self.llama.tokenize(
                prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
            )
            stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
            extra_stop = tuple(s for s in stop if s)
        else:
            assert request.prompt is not None
            tokens = self.llama.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=True)
            extra_stop = ()
        if not tokens:
            raise BadRequest("the prompt is empty")
        if len(tokens) >= self.info.n_ctx:
            raise PromptTooLong(len(tokens), self.info.n_ctx)
        return PreparedPrompt(tokens=list(tokens), stop=extra_stop)

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token))

    def close(self) -> None:
        self.llama.close()
        self._log.restore()


def load_model(options: LoadOptions) -> LoadedModel:
    """Load options.model_path; raises ModelLoadError with llama.cpp's reason."""
    log = LlamaLog()
    log.install()
    started = time.perf_counter()
    try:
        llama = new_llama(
            options.extra_buffers,
            model_path=str(options.model_path),
            n_ctx=options.n_ctx,
            n_gpu_layers=options.n_gpu_layers,
            main_gpu=options.main_gpu,
            tensor_split=list(options.tensor_split) if options.tensor_split else None,
            n_threads=options.threads,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        reason = _load_reason(log, exc)
        log.restore()
        raise ModelLoadError(reason) from exc
    load_ms = (time.perf_counter() - started) * 1000
    supported = gpu_offload_supported()
    n_layer = int(llama_cpp.llama_model_n_layer(llama.model))
    info = EngineInfo(
        model_path=str(options.model_path),
        n_ctx=int(llama.n_ctx()),
        n_ctx_train=int(llama._model.n_ctx_train()),
        n_layer=n_layer,
        n_gpu_layers_requested=options.n_gpu_layers,
        n_gpu_layers_offloaded=layers_offloaded(options.n_gpu_layers, n_layer, supported),
        gpu_offload_supported=supported,
        has_chat_template=bool(llama.metadata.get("tokenizer.chat_template")),
        slots_total=1,
        n_threads=int(llama.n_threads or os.cpu_count() or 1),
        load_ms=load_ms,
    )
    if options.n_gpu_layers != 0 and not supported:
        logger.warning(
            "n_gpu_layers=%d asked for, but this llama-cpp-python build is CPU-only; every "
            'layer runs on the CPU. Rebuild with CUDA: CMAKE_ARGS="-DGGML_CUDA=on" pip install '
            "--force-reinstall --no-cache-dir llama-cpp-python",
            options.n_gpu_layers,
        )
    return LoadedModel(llama, info, log)
