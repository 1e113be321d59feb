"""Loads an untrusted model file without running code from it, as the tf_keras model TFMOT
prunes: a Keras 3 file is translated by :mod:`bridge` and checked on a probe batch."""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pruning_core import formats, modelcheck

from .errors import ConversionError, JobInputError

# Past this the translated model is not the uploaded one: the job fails rather than prune it. It
# bounds each output's largest difference relative to that output's magnitude where it is above
# 1 (bridge.relative_difference): float32 alone rounds an output of 2e4 by 1e-3.
CONVERSION_TOLERANCE = 1e-4


def conversion_refused(diff: float, relative: float) -> str | None:
    """Why outputs that differ by ``diff`` (``relative`` to their scale) are not the same
    model's, or None."""
    if relative <= CONVERSION_TOLERANCE:
        return None
    return (
        f"outputs differ by {diff:.3g} on a probe batch, {relative:.3g} of their magnitude (tolerance "
        f"{CONVERSION_TOLERANCE:g}, relative past magnitude 1)"
    )


# Keras builds a model from its configuration, every variable filled by its initializer, before
# it reads (and checks the shapes of) the weights: a configuration of layers far larger than its
# weights file (a Dense(100000) over 100000 inputs: a 40 GB kernel) would be allocated whole, and
# kill the worker at each attempt. The variables a load creates are counted from their shapes
# before each initializer runs, against what the weights file declares (itself within
# max_decompressed): twice that, as Keras 3 builds the layer a Bidirectional wraps and then a
# copy of it (1.5 times the layer's variables), and this much more for variables Keras creates
# but does not save (the states of seed generators).
VARIABLE_SLACK = 16 * 1024 * 1024


class VariableBudget:
    """Counts the bytes of the variables a model load creates; refuses the first past twice
    the ``declared`` bytes of the weights file (and VARIABLE_SLACK)."""

    def __init__(self, declared: int) -> None:
        self.declared = declared
        self.created = 0
        self.refused: JobInputError | None = None  # kept: Keras may wrap or swallow the error

    def count(self, name: str, shape: Sequence[int], dtype: Any) -> None:
        """Counts a variable about to be created; refuses it past the budget."""
        self.created += math.prod(shape) * tf.as_dtype(dtype).size
        if self.created > 2 * self.declared + VARIABLE_SLACK:
            self.refused = JobInputError(
                f"model: its configuration makes variables of {self.created} bytes or more (the last {name}, "
                f"of shape {list(shape)}), but its weights file declares {self.declared}: its layers are larger than "
                "its weights; refused before allocating them"
            )
            raise self.refused

    def check(self) -> None:
        """Raises the refusal, should Keras have caught it."""
        if self.refused is not None:
            raise self.refused

    @contextlib.contextmanager
    def tf_keras(self) -> Iterator[None]:
        """Counts the variables created in this thread (tf_keras gives each one's shape to the
        variable creators, before its initializer runs; Keras 3's are counted by the bridge)."""

        def creator(next_creator: Any, **kwargs: Any) -> Any:
            shape = kwargs.get("shape")
            if shape is not None and tf.TensorShape(shape).is_fully_defined():
                self.count(
                    kwargs.get("name") or "variable", tf.TensorShape(shape).as_list(), kwargs.get("dtype") or tf.float32
                )
            return next_creator(**kwargs)

        with tf.variable_creator_scope(creator):
            yield
        self.check()


@dataclass
class Loaded:
    """A model as the pipeline uses it."""

    model: Any  # tf_keras: what TFMOT prunes
    keras_version: int  # of the uploaded file: 2 (tf_keras) or 3
    original: Any = None  # the Keras 3 model as uploaded (None for a tf_keras file)
    conversion_diff: float = 0.0  # max |outputs of original - outputs of model| on a probe batch


def _inspect(path: os.PathLike[str] | str, workdir: pathlib.Path, max_decompressed: int) -> tuple[Any, pathlib.Path]:
    try:
        info = modelcheck.inspect_model(pathlib.Path(path), max_decompressed)
    except modelcheck.ModelRejected as exc:
        more = f" (and {exc.total - 1} more refused layers)" if exc.total > 1 else ""
        raise JobInputError(f"model: {exc}{more}") from None
    # Keras picks the format from the suffix; the artifact store names files by hash.
    named = workdir / f"model{formats.model_suffix(info.format)}"
    if not named.exists():
        os.symlink(os.path.abspath(path), named)
    return info, named


def load_model(path: os.PathLike[str] | str, workdir: pathlib.Path, max_decompressed: int) -> Any:
    """Checks the saved configuration (no Lambda, no custom objects), then deserialises it
    uncompiled as tf_keras, with Keras' safe mode on for the .keras format.

    Raises:
        JobInputError: the file is not an acceptable model.
    """
    return load(path, workdir, max_decompressed).model


def load(path: os.PathLike[str] | str, workdir: pathlib.Path, max_decompressed: int, x: Any = None) -> Loaded:
    """Like :func:`load_model`; a Keras 3 file is loaded by Keras 3 (safe mode) and translated,
    the two compared on a probe batch shaped like the samples of the job's data ``x`` where the
    model leaves a dimension open (:func:`bridge.make_probe`).

    Raises:
        JobInputError: the file is not an acceptable model, or has a layer the bridge refuses.
        ConversionError: the translated model's outputs differ from the uploaded one's.
    """
    info, named = _inspect(path, workdir, max_decompressed)
    budget = VariableBudget(info.weight_bytes)
    if info.keras_version == 3:
        from . import bridge

        try:
            original = bridge.load_keras3(named, workdir, max_decompressed, budget)
            model = bridge.to_tf_keras(original, flatten_nested=True)
        except bridge.BridgeError as exc:
            raise JobInputError(f"model: {exc}") from None
        except JobInputError:
            raise  # it names its cause ("model: cannot be loaded with Keras 3: ...")
        except (ValueError, OSError, TypeError, KeyError) as exc:
            raise JobInputError(f"model: cannot be loaded: {exc}") from None
        check_finite(original)
        diff, relative = bridge.compare(original, model, data=x)
        if refused := conversion_refused(diff, relative):
            raise ConversionError(f"the tf_keras translation of the Keras 3 model is not the same model: {refused}")
        return Loaded(model, 3, original, diff)
    try:
        with budget.tf_keras():
            if info.format == "keras":
                loaded = keras.models.load_model(named, compile=False, safe_mode=True)
            else:
                loaded = keras.models.load_model(named, compile=False)
    except (ValueError, OSError, TypeError, KeyError) as exc:
        budget.check()  # the refusal, as Keras may have wrapped it
        raise JobInputError(f"model: cannot be loaded: {exc}") from None
    check_finite(loaded)
    return Loaded(loaded, 2)


def check_finite(model: Any) -> None:
    """Refuses a model with a NaN or infinite weight (tf_keras or Keras 3): nothing it computes
    can be evaluated, and its Keras 3 translation "differs by nan", which read as the
    service's fault."""
    for weight in model.weights:
        value = np.asarray(weight)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            raise JobInputError(
                f"model: weight {weight.path if hasattr(weight, 'path') else weight.name} holds {bad} NaN or "
                f"infinite value{'s' if bad != 1 else ''}: the uploaded model is broken (retrain or re-save it)"
            )
