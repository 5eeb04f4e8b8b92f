"""Route llama.cpp's own log lines into Python logging and keep its recent errors.

llama.cpp explains a refused model only in its log ("error loading model vocabulary: ...");
the exception llama-cpp-python raises just says "Failed to load model from file".
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import llama_cpp

logger = logging.getLogger("llama.cpp")

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line.
_LEVELS = {
    0: logging.CRITICAL,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.WARNING,
    4: logging.ERROR,
}
_CONT = 5


class LlamaLog:
    """Installed as llama.cpp's log callback while it exists; keeps the last error lines.

    The ctypes callback object must outlive every call llama.cpp makes to it, so whoever
    installs a LlamaLog keeps it until restore().
    """

    def __init__(self, max_errors: int = 20, listener: Callable[[str], None] | None = None) -> None:
        self._errors: deque[str] = deque(maxlen=max_errors)
        # Also given every line (a quantize job reads its progress from them).
        self._listener = listener
        self._lock = threading.Lock()
        self._last_level = logging.DEBUG
        self._callback: Any = llama_cpp.llama_log_callback(self._on_log)

    def install(self) -> None:
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def restore(self) -> None:
        """Give llama-cpp-python its own callback back."""
        from llama_cpp._logger import llama_log_callback

        llama_cpp.llama_log_set(llama_log_callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, user_data: Any) -> None:
        line = text.decode("utf-8", errors="replace").rstrip()
        py_level = self._last_level if level == _CONT else _LEVELS.get(level, logging.INFO)
        self._last_level = py_level
        if not line:
            return
        if py_level >= logging.ERROR:
            with self._lock:
                self._errors.append(line)
        logger.log(py_level, "%s", line)
        if self._listener is not None:
            self._listener(line)

    def clear_errors(self) -> None:
        with self._lock:
            self._errors.clear()

    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)
