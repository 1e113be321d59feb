"""An upload's quota reservation ends when it is released, even when the cancel of its renewal
is lost: on Python 3.11, asyncio.wait_for (under redis-py's socket writes) drops a cancellation
that arrives as the write completes, and the renewal loop then ran on while the upload's
handler waited for it forever (its client never answered)."""

from __future__ import annotations

import asyncio

from pruning_server.limits import Reservation


class LosesOneCancel:
    """A job store whose renewal swallows a cancellation, as wait_for may."""

    def __init__(self) -> None:
        self.renewals = 0
        self.lost = 0
        self.released: list[str] = []

    async def renew_bytes(self, tenant, token, held, hold_s):
        self.renewals += 1
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if self.lost:  # a later cancel is kept, so that a test that fails can end
                raise
            self.lost += 1  # lost, as wait_for loses it
        return True

    async def release_bytes(self, tenant, token):
        self.released.append(token)


def test_a_release_ends_the_renewals_even_when_a_cancel_is_lost():
    async def main() -> int:
        store = LosesOneCancel()
        reservation = Reservation(store, "t", "f", quota=0, hold_s=0.003, step=1, retry_after_s=1)  # type: ignore[arg-type]
        reservation._renewing = asyncio.ensure_future(reservation._renew())
        while store.renewals < 3:
            await asyncio.sleep(0.001)
        while True:  # release while a renewal is under way: its cancel is the one lost
            await asyncio.sleep(0)
            if store.renewals and reservation._renewing is not None:
                break
        releasing = asyncio.ensure_future(reservation.release())
        done, _ = await asyncio.wait([releasing], timeout=5)
        if not done:  # the second cancel is not lost: this ends it
            releasing.cancel()
            await asyncio.wait([releasing], timeout=5)
        assert done, "release() waited for a renewal loop that did not end"
        assert store.lost == 1
        assert reservation._renewing.done()
        after = store.renewals
        await asyncio.sleep(0.05)
        return store.renewals - after

    assert asyncio.run(main()) == 0  # no renewal after the release
