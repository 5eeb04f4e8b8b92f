"""Herd: operator console and serving layer for self-hosted GGUF models on llama.cpp."""

__version__ = "0.1.0"
