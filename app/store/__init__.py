"""The GGUF model store: scan, inspect, validate, import, estimate memory."""
