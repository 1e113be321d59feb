"""Caps on concurrent long-lived calls (watches, uploads), per tenant and in all, and the
bytes an upload under way holds of its tenant's stored-bytes quota.

Caps are counted in this server process: each replica bounds what it holds itself. Over a
cap the call answers RESOURCE_EXHAUSTED with a retry hint, and nothing else is affected.
Reservations are kept in Redis, so that all replicas' uploads share one quota.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter

import grpc

from pruning_core.store import AsyncJobStore

from .errors import Exhausted, Failure

log = logging.getLogger(__name__)


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


class Reservation:
    """What one upload holds of its tenant's ``PRUNING_MAX_STORED_BYTES_PER_TENANT``, in Redis,
    ahead of the bytes that arrive: ``need(n)`` before the upload holds ``n`` bytes in all,
    ``release()`` once its record counts them or it failed. Concurrent uploads (on any server
    replica) cannot pass the quota together: a reservation is granted only while the stored
    bytes, every other upload's reservation and this one fit. A reservation is taken
    ``step`` bytes ahead of what arrived (at most what was announced), renewed every
    ``hold_s / 3`` while the upload goes on, and lapses ``hold_s`` after its server stopped
    renewing it (a server that died mid-upload)."""

    def __init__(
        self, store: AsyncJobStore, tenant: str, field: str, quota: int, hold_s: float, step: int, retry_after_s: float
    ):
        self.store, self.tenant, self.field, self.quota = store, tenant, field, quota
        self.hold_s, self.step, self.retry_after_s = hold_s, step, retry_after_s
        self.token = uuid.uuid4().hex
        self.held = 0
        self.announced = 0
        self._renewing: asyncio.Task | None = None
        self._ended = False  # set by release(): the renewal loop stops at its next turn

    async def need(self, size: int) -> None:
        """The upload will hold ``size`` bytes in all: reserved, or RESOURCE_EXHAUSTED naming
        what the tenant stores, what its other uploads hold and the quota (with a retry hint
        when only other uploads under way stand in the way: they end, or lapse)."""
        if not self.quota or size <= self.held:
            return
        ahead = self.announced if self.announced else size + self.step
        for want in dict.fromkeys((max(ahead, size), size)):  # ahead if it fits, else just enough
            ok, stored, others = await self._reserve(want)
            if ok:
                self.held = want
                if self._renewing is None:
                    self._renewing = asyncio.create_task(self._renew())
                return
        if stored + size <= self.quota:  # it fits once other uploads end: worth a retry
            raise Exhausted(over_quota(self.field, stored, self.quota, size, others, waiting=True), self.retry_after_s)
        raise Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, over_quota(self.field, stored, self.quota, size, others))

    async def _reserve(self, size: int) -> tuple[bool, int, int]:
        return await self.store.reserve_bytes(self.tenant, self.token, size, self.quota, self.hold_s)

    async def _renew(self) -> None:
        while not self._ended:
            await asyncio.sleep(self.hold_s / 3)
            if self._ended:
                return
            try:  # what was granted stays granted: exports stored meanwhile do not take it back
                renewed = await self.store.renew_bytes(self.tenant, self.token, self.held, self.hold_s)
            except Exception:  # the next chunk's need() answers for a store that went away
                log.warning("could not renew upload %s's reservation", self.token, exc_info=True)
                continue
            if not renewed:
                # It lapsed (renewals came too late): its room may be another upload's now, so
                # the next chunk reserves again, against the quota.
                log.warning("upload %s's reservation of %d bytes lapsed; reserving again", self.token, self.held)
                self.held = 0

    async def release(self) -> None:
        self._ended = True
        renewing = self._renewing
        # cancel() alone may not end it: on Python 3.11, asyncio.wait_for (redis-py's socket
        # writes use it) drops a cancellation that arrives as the write it waits on completes
        # (CPython gh-86296), and the loop renewed forever while this awaited it. The flag ends
        # the loop at its next turn; the cancel is repeated, and each wait bounded. A caller
        # cancelled meanwhile is cancelled (asyncio.wait does not swallow it).
        while renewing is not None and not renewing.done():
            renewing.cancel()
            await asyncio.wait([renewing], timeout=1.0)
        if renewing is not None and not renewing.cancelled() and renewing.exception() is not None:
            log.warning("upload %s's renewals failed", self.token, exc_info=renewing.exception())
        if not self.quota or not self.held:
            return
        try:
            await self.store.release_bytes(self.tenant, self.token)
        except Exception:  # it lapses on its own after hold_s
            log.warning("could not release upload %s's reservation of %d bytes", self.token, self.held, exc_info=True)


def over_quota(field: str, stored: int, quota: int, more: int = 0, others: int = 0, waiting: bool = False) -> str:
    adding = f"; this upload adds {more} more" if more else ""
    pending = f" (and {others} in other uploads under way)" if others else ""
    advice = (
        "the other uploads' bytes count until they end"
        if waiting
        else "delete some (DeleteArtifact, pruning delete) or wait for the retention"
    )
    return f"{field}: this tenant stores {stored} bytes of artifacts{pending}, its quota is {quota}{adding}; {advice}"
