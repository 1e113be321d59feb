"""Small models and datasets the tests build (TensorFlow only in the test process)."""

from __future__ import annotations

import os
import pathlib

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def dataset(path: pathlib.Path, n_train: int = 1024, n_test: int = 256, shape=(8, 8), seed: int = 0) -> pathlib.Path:
    """A learnable 4-class problem: the label is the brightest quadrant."""
    rng = np.random.default_rng(seed)

    def make(n):
        x = rng.random((n, *shape), dtype=np.float32)
        h, w = shape[0] // 2, shape[1] // 2
        quadrants = np.stack(
            [x[:, :h, :w].sum((1, 2)), x[:, :h, w:].sum((1, 2)), x[:, h:, :w].sum((1, 2)), x[:, h:, w:].sum((1, 2))], 1
        )
        return x, quadrants.argmax(1).astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def small_model(path: pathlib.Path, shape=(8, 8), activation: str | None = None) -> pathlib.Path:
    """Flatten -> Dense 32 relu -> Dense 4 (logits, or ``activation``'s output), trained a little."""
    import tf_keras as keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.layers.InputLayer(input_shape=shape),
            keras.layers.Reshape((*shape, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),  # named: a process that built other models numbers it
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(4, activation=activation, name="logits"),
        ]
    )
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if path.suffix == ".h5":
        keras.models.save_model(model, path, save_format="h5")
    else:
        model.save(path)
    return path


def lambda_model(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """A model whose Lambda layer creates ``marker`` whenever its code runs."""
    import tf_keras as keras

    marker_name = str(marker)

    def touch(x):
        open(marker_name, "w").close()
        return x * 2.0

    model = keras.Sequential(
        [
            keras.layers.InputLayer(input_shape=(8, 8)),
            keras.layers.Lambda(touch),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    if path.suffix == ".h5":
        keras.models.save_model(model, path, save_format="h5")
    else:
        model.save(path)
    marker.unlink(missing_ok=True)
    return path


def weights_sparsity(path: pathlib.Path) -> dict[str, float]:
    """Kernel sparsity per layer of a saved model, loaded with plain tf_keras."""
    import tf_keras as keras

    model = keras.models.load_model(path)
    out = {}
    for layer in model.layers:
        kernels = [w for w in layer.get_weights() if w.ndim >= 2]
        if kernels:
            total = sum(k.size for k in kernels)
            out[layer.name] = 1.0 - sum(int(np.count_nonzero(k)) for k in kernels) / total
    return out
