"""Writes a model in each export format of the registry, in the Keras version asked for."""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import h5py
import numpy as np
import tensorflow as tf
import tf_keras as keras

from pruning.v1 import pruning_pb2 as pb
from pruning_core import formats

from . import tferrors
from .errors import JobInputError

KERAS_FILES = (pb.EXPORT_FORMAT_KERAS, pb.EXPORT_FORMAT_H5)


def as_keras3(model: Any, like: Any, workdir: pathlib.Path) -> Any:
    """The tf_keras ``model`` as a Keras 3 model: its weights copied into a clone of ``like``
    (the Keras 3 model it was translated from), or, for a model that came as tf_keras, read
    back by Keras 3's own loader of Keras 2 HDF5 files."""
    import keras as keras3

    from . import bridge

    if like is not None:
        return bridge.to_keras3(model, like)
    path = workdir / "as_keras3.h5"
    keras.models.save_model(model, path, include_optimizer=False, save_format="h5")
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(bridge.for_keras3_loader(config))
    return keras3.saving.load_model(path, compile=False)


def keras3_twin(
    model: Any, like: Any, workdir: pathlib.Path, field: str = "spec.export.keras_version", x: Any = None
) -> tuple[Any, float]:
    """:func:`as_keras3` of ``model``, and the largest difference of their outputs on a probe
    batch. A model Keras 3 cannot read back, or reads back computing something else (an
    activation Keras 3 defines differently, such as hard_sigmoid), fails the job naming
    ``field``: the service never hands back a Keras 3 file that is not the model it trained."""
    from . import bridge
    from .safe_load import conversion_refused

    try:
        twin = as_keras3(model, like, workdir)
    except (ValueError, TypeError, KeyError) as exc:
        raise JobInputError(
            f"{field}: Keras 3 cannot read this model back ({tferrors.root_cause(exc)}); ask for Keras 2 files "
            "(export keras_version 2)"
        ) from exc
    diff, relative = bridge.compare(twin, model, data=x)  # open sizes: the data's
    if refused := conversion_refused(diff, relative):
        raise JobInputError(
            f"{field}: the model read back as Keras 3 computes something else ({refused}): Keras 3 defines one of its "
            "layers or activations differently (hard_sigmoid, say); ask for Keras 2 files (export keras_version 2)"
        )
    return twin, diff


def load_export(path: pathlib.Path, keras_version: int, name: str = "") -> Any:
    """A written .keras or .h5 export loaded back as its user will load it. With ``name`` (the
    format's), a file that does not load fails the job naming the format, not INTERNAL: the
    service never hands back a file nothing reads."""
    try:
        if keras_version == 3:
            import keras as keras3

            return keras3.saving.load_model(path, compile=False)
        return keras.models.load_model(path, compile=False)
    except Exception as exc:
        if not name:
            raise
        raise JobInputError(
            f"spec.export.formats: {name}: the written file does not load back in Keras {keras_version} "
            f"({tferrors.root_cause(exc)}); export another format"
        ) from exc


def _representative(model: Any, x: Any, n: int = 200) -> Any:
    """Calibration batches for int8 conversion: one sample at a time, one array per input, in
    the dtype of its model input (the converter takes nothing else; Keras casts in training)."""
    if isinstance(x, dict):
        arrays = [np.asarray(x[name][:n]) for name in model.input_names]
    else:
        arrays = [np.asarray(x[:n])]
    arrays = [a.astype(t.dtype.as_numpy_dtype) for a, t in zip(arrays, model.inputs, strict=True)]
    if len(arrays) > 1:  # by name: the converted model's inputs need not come in the Keras order
        names = list(model.input_names)
        return lambda: (
            {name: a[i : i + 1] for name, a in zip(names, arrays, strict=True)} for i in range(len(arrays[0]))
        )
    return lambda: ([a[i : i + 1] for a in arrays] for i in range(len(arrays[0])))


def export(
    model: Any,
    fmt: pb.ExportFormat.ValueType,
    path_base: pathlib.Path,
    x_sample: Any,
    keras3_model: Any = None,
) -> pathlib.Path:
    """Writes ``model`` (tf_keras) in one export format; returns the file (named ``path_base``
    + the format's suffix). With ``keras3_model`` (the same model in Keras 3) the .keras and
    .h5 files are written by Keras 3."""
    path = path_base.with_name(formats.export(fmt).filename(path_base.name))
    with tferrors.step(f"export to {formats.export(fmt).name}"):
        if fmt in KERAS_FILES and keras3_model is not None:
            keras3_model.save(path)
        elif fmt == pb.EXPORT_FORMAT_KERAS:
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
                converter.representative_dataset = _representative(model, x_sample)
            path.write_bytes(_converted(converter, formats.export(fmt).name))
    return path


TFLITE_FORMATS = (pb.EXPORT_FORMAT_TFLITE, pb.EXPORT_FORMAT_TFLITE_INT8)


def _converted(converter: Any, name: str) -> bytes:
    """The converter's flatbuffer; what the model cannot become in TFLite (an op with no
    TFLite kernel, a dynamic shape its passes need static) is the model's, named as such."""
    from tensorflow.lite.python.convert_phase import ConverterError

    try:
        flat = bytes(converter.convert())
    except ConverterError as exc:
        raise JobInputError(
            f"spec.export.formats: {name}: the model does not convert to TFLite ({tferrors.root_cause(exc)}); "
            "drop the format or replace the layer"
        ) from exc
    # A file that converts may still not run (GroupNormalization's BROADCAST_TO fails to prepare
    # at any batch size): run it once on zeros, so the service never hands back such a file.
    # Only where every input's shape is known but its batch: an unknown length or image size
    # is 1 in "shape", and a valid convolution over 1 step makes the interpreter crash the
    # process (a segmentation fault), not raise.
    try:
        interpreter = tf.lite.Interpreter(model_content=flat)
        details = interpreter.get_input_details()
        if any(-1 in list(d.get("shape_signature", d["shape"]))[1:] for d in details):
            return flat
        interpreter.allocate_tensors()
        for d in details:
            interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interpreter.invoke()
    except (RuntimeError, ValueError) as exc:
        raise JobInputError(
            f"spec.export.formats: {name}: the model converts to TFLite but the file does not run "
            f"({tferrors.root_cause(exc)}); drop the format or replace the layer"
        ) from exc
    return flat


def check_tflite(model: Any, formats_asked: Any) -> None:
    """Converts the model as uploaded to TFLite when a TFLite export is asked for, so that a
    model TFLite cannot take fails the job before fine-tuning, not after it: pruning changes
    no operation the converter sees."""
    asked = [f for f in formats_asked if f in TFLITE_FORMATS]
    if asked and formats_asked[0] not in TFLITE_FORMATS:  # the baseline's own export converted it already
        name = formats.export(asked[0]).name
        with tferrors.step(f"export to {name}"):
            _converted(tf.lite.TFLiteConverter.from_keras_model(model), name)
