"""Writes a model in each export format of the registry."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pruning.v1 import pruning_pb2 as pb
from pruning_core import formats

from . import tferrors


def export(model: Any, fmt: pb.ExportFormat.ValueType, path_base: pathlib.Path, x_sample: np.ndarray) -> pathlib.Path:
    """Writes ``model`` in one export format; returns the file (named ``path_base`` + the
    format's suffix)."""
    path = path_base.with_name(formats.export(fmt).filename(path_base.name))
    with tferrors.step(f"export to {formats.export(fmt).name}"):
        if fmt == pb.EXPORT_FORMAT_KERAS:
            model.save(path)
        elif fmt == pb.EXPORT_FORMAT_H5:
            keras.models.save_model(model, path, include_optimizer=False, save_format="h5")
        elif fmt == pb.EXPORT_FORMAT_SAVED_MODEL:
            directory = path_base.parent / f"{path_base.name}_saved_model"
            tf.saved_model.save(model, str(directory))
            shutil.make_archive(str(path.with_suffix("")), "zip", directory)
        else:
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if fmt == pb.EXPORT_FORMAT_TFLITE_INT8:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                sample = x_sample[:200].astype("float32")
                converter.representative_dataset = lambda: ([row[None, ...]] for row in sample)
            path.write_bytes(converter.convert())
    return path
