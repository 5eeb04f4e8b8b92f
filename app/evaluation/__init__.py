"""Measured profiles of models: size, memory against the estimate, speed, perplexity."""
