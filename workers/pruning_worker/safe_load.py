"""Loads an untrusted model file without running code from it, as the tf_keras model TFMOT
prunes: a Keras 3 file is translated by :mod:`bridge` and checked on a probe batch."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
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


def load(path: os.PathLike[str] | str, workdir: pathlib.Path, max_decompressed: int) -> Loaded:
    """Like :func:`load_model`; a Keras 3 file is loaded by Keras 3 (safe mode) and translated.

    Raises:
        JobInputError: the file is not an acceptable model, or has a layer the bridge refuses.
        ConversionError: the translated model's outputs differ from the uploaded one's.
    """
    info, named = _inspect(path, workdir, max_decompressed)
    if info.keras_version == 3:
        from . import bridge

        try:
            original = bridge.load_keras3(named, workdir, max_decompressed)
            model = bridge.to_tf_keras(original, flatten_nested=True)
        except bridge.BridgeError as exc:
            raise JobInputError(f"model: {exc}") from None
        except JobInputError:
            raise  # it names its cause ("model: cannot be loaded with Keras 3: ...")
        except (ValueError, OSError, TypeError, KeyError) as exc:
            raise JobInputError(f"model: cannot be loaded: {exc}") from None
        check_finite(original)
        diff, relative = bridge.compare(original, model)
        if refused := conversion_refused(diff, relative):
            raise ConversionError(f"the tf_keras translation of the Keras 3 model is not the same model: {refused}")
        return Loaded(model, 3, original, diff)
    try:
        if info.format == "keras":
            loaded = keras.models.load_model(named, compile=False, safe_mode=True)
        else:
            loaded = keras.models.load_model(named, compile=False)
    except (ValueError, OSError, TypeError, KeyError) as exc:
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
