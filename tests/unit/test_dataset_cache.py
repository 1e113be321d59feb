"""A worker process keeps loaded datasets by content id: the next job on the same data reads
nothing, no job can change another's arrays, and the cache keeps to its bound."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pruning_worker import datasets


def _arrays(n: int, fill: int = 0):
    return (np.full((n, 4), fill, np.float32), np.zeros(n, np.int64), {"a": np.zeros((2, 4), np.float32)}, np.zeros(2))


def test_second_load_reads_nothing_and_arrays_are_read_only(tmp_path):
    path = tmp_path / "d.npz"
    x, y, _, _ = _arrays(50_000)
    np.savez(path, x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    cache = datasets.LoadedCache(1 << 30)
    loads = []

    def load():
        loads.append(1)
        return datasets.load_npz(path)

    first = cache.get("npz:one", load)
    started = time.perf_counter()
    second = cache.get("npz:one", load)
    assert time.perf_counter() - started < 0.05 and loads == [1] and second is first
    with pytest.raises(ValueError):
        second[0][0, 0] = 1.0  # read-only: a job cannot change what the next one trains on


def test_least_recently_used_goes_past_the_bound():
    one = _arrays(1000)
    size = sum(a.nbytes for a in (one[0], one[1], one[2]["a"], one[3]))
    cache = datasets.LoadedCache(2 * size + 1)
    for key in ("a", "b"):
        cache.get(key, lambda: _arrays(1000))
    cache.get("a", lambda: pytest.fail("'a' is cached"))  # 'b' is now the least recently used
    cache.get("c", lambda: _arrays(1000))
    calls = []
    cache.get("b", lambda: calls.append(1) or _arrays(1000))
    cache.get("c", lambda: pytest.fail("'c' is cached"))
    assert calls == [1]


def test_zero_keeps_nothing():
    cache = datasets.LoadedCache(0)
    calls = []
    for _ in range(2):
        cache.get("a", lambda: calls.append(1) or _arrays(10))
    assert calls == [1, 1]


def test_only_npy_members_are_arrays_as_the_upload_check_reads_them(tmp_path):
    import zipfile

    path = tmp_path / "d.npz"
    x = np.zeros((3, 2), np.float32)
    np.savez(path, **{"x_train.a": x, "x_train.b": x, "y_train": np.zeros(3), "x_test.a": x, "x_test.b": x}, y_test=x)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("x_train.notes", b"not an array")  # ignored, as the upload's check ignores it
    x_train, _, x_test, _ = datasets.load_npz(path)
    assert sorted(x_train) == ["a", "b"] and sorted(x_test) == ["a", "b"]


def test_a_member_without_npy_does_not_shadow_the_array(tmp_path):
    import zipfile

    path = tmp_path / "d.npz"
    x = np.ones((3, 2), np.float32)
    np.savez(path, x_train=x, y_train=np.zeros(3), x_test=x, y_test=np.zeros(3))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("x_train", b"not the array the upload's check read")
    x_train, *_ = datasets.load_npz(path)
    assert x_train.shape == (3, 2) and x_train.dtype == np.float32
