"""Datasets for retraining: select prompts, clean them, split them, distill and augment them.

Files live under HERD_HOME/datasets/<name>/ (JSONL per split and a dataset card); the
`datasets` table (written by store.py alone) lists them.
"""
