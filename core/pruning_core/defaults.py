"""The one table of job spec defaults. A 0 or empty field of a JobSpec means "the default
below"; the server fills them in (``validation.with_defaults``) before a job is queued, so the
workers and every client see the same values."""

from __future__ import annotations

EPOCHS = 2
BATCH_SIZE = 128
OPTIMIZER = "adam"
LOSS = "sparse_categorical_crossentropy_from_logits"
VALIDATION_SPLIT = 0.1  # when the optional field is unset; an explicit 0 means no validation
FREQUENCY = 100
POWER = 3.0
SPARSITY_TOLERANCE = 0.01  # a job whose kernels end further than this from the target fails
BLOCK_SIZE = (1, 1)
DATASET = "mnist"
# Structured pruning.
MIN_CHANNELS = 1
ROUND_TO = 1
TAYLOR_BATCHES = 4
LATENCY_REPEATS = 10  # also the job report's
# Searches: a sweep's (SweepSpec), and a job's for its budget (AccuracyBudget).
SEARCH_LOW, SEARCH_HIGH, SEARCH_TOLERANCE = 0.5, 0.95, 0.02
MAX_TRIALS, PARALLEL_TRIALS = 8, 2
LIMIT_TRIALS, LIMIT_PARALLEL = 100, 32

MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 65536
MAX_TAYLOR_BATCHES = 256
MAX_LATENCY_REPEATS = 1000
