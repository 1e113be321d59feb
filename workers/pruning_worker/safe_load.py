"""Loads an untrusted model file without running code from it."""

from __future__ import annotations

import os
import pathlib

import tf_keras as keras

from pruning_core import formats, modelcheck

from .errors import JobInputError

def load_model(path: os.PathLike | str, workdir: pathlib.Path, max_decompressed: int) -> keras.Model:
    """Checks the saved configuration (no Lambda, no custom objects), then deserialises it
    uncompiled, with Keras' safe mode on for the .keras format.

    Raises:
        JobInputError: the file is not an acceptable model.
    """
    try:
        info = modelcheck.inspect_model(pathlib.Path(path), max_decompressed)
    except modelcheck.ModelRejected as exc:
        raise JobInputError(f"model: {exc}") from None
    # Keras picks the format from the suffix; the artifact store names files by hash.
    named = workdir / f"model{formats.model_suffix(info.format)}"
    os.symlink(os.path.abspath(path), named)
    try:
        if info.format == "keras":
            return keras.models.load_model(named, compile=False, safe_mode=True)
        return keras.models.load_model(named, compile=False)
    except (ValueError, OSError, TypeError, KeyError) as exc:
        raise JobInputError(f"model: cannot be loaded: {exc}") from None
