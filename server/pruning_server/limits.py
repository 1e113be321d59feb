"""Caps on concurrent long-lived calls (watches, uploads), per tenant and in all.

Counted in this server process: each replica bounds what it holds itself. Over a cap the
call answers RESOURCE_EXHAUSTED with a retry hint, and nothing else is affected.
"""

from __future__ import annotations

from collections import Counter


class Caps:
    """Concurrent uses of one kind of call, ``per_tenant`` for each tenant, ``total`` in all."""

    def __init__(self, name: str, per_tenant: int, total: int):
        self.name, self.per_tenant, self.total = name, per_tenant, total
        self._held: Counter[str] = Counter()

    @property
    def held(self) -> int:
        return self._held.total()

    def try_acquire(self, tenant: str) -> str | None:
        """Takes a slot; None when taken, else why not."""
        if self._held[tenant] >= self.per_tenant:
            return f"{self._held[tenant]} concurrent {self.name} of this tenant, the most allowed"
        if self.held >= self.total:
            return f"{self.held} concurrent {self.name} on this server, the most allowed"
        self._held[tenant] += 1
        return None

    def release(self, tenant: str) -> None:
        self._held[tenant] -= 1
        if self._held[tenant] <= 0:
            del self._held[tenant]
