"""The phases a job's progress goes through (``Progress.phase`` in the contract)."""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    LOAD = "load"
    BASELINE = "baseline"
    STRUCTURE = "structure"  # structured pruning: channels removed before fine-tuning
    FINE_TUNE = "fine_tune"
    EVALUATE = "evaluate"
    EXPORT = "export"
    LATENCY = "latency"  # the baseline and the pruned model timed side by side
    REPORT = "report"  # the report's plots and TensorBoard logs
    SEARCH = "search"  # a job with an accuracy budget while the server's search for it runs
