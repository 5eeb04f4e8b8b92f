"""Smaller or faster variants of a model in the store: quantization and layer pruning."""
