"""A name in quarantine/ that only looks like a set-aside one (str.isdigit takes
"²", which int() refuses) stays, instead of failing the housekeeping's expiry."""

from __future__ import annotations

import time

from pruning_core.objectstore import QUARANTINE, LocalStore


def test_a_name_of_non_ascii_digits_stays(tmp_path):
    store = LocalStore(tmp_path / "artifacts")
    (store.root / QUARANTINE).mkdir(parents=True, exist_ok=True)
    odd = store.root / QUARANTINE / f"{'a' * 64}.²"
    odd.write_bytes(b"an operator's note")
    old = store.root / QUARANTINE / f"{'b' * 64}.{time.time_ns() - 10**12}"
    old.write_bytes(b"changed bytes")
    assert store.expire_set_aside(time.time()) == 1
    assert odd.exists() and not old.exists()
