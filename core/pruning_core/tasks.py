"""Celery task names: the server sends them by name, the workers register them."""

from __future__ import annotations

PRUNE = "pruning.prune"
