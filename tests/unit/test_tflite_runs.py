"""A model TFLite converts into a file that does not run (GroupNormalization: "BROADCAST_TO
failed to prepare" on the first invoke, at batch 1 too): the job succeeded, handed back the
.tflite, and said only "tflite export: no test accuracy" as a WARNING. Now the check before
training runs the converted file once and fails the job naming spec.export.formats."""

from __future__ import annotations

import pytest

from pruning.v1 import pruning_pb2 as pb


def test_a_tflite_file_that_does_not_run_fails_the_check_before_training():
    import tf_keras as keras

    from pruning_worker.errors import JobInputError
    from pruning_worker.export import check_tflite

    L = keras.layers
    i = keras.Input((8, 8, 3))
    x = L.GroupNormalization(groups=2)(L.Conv2D(4, 3)(i))
    model = keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    with pytest.raises(JobInputError, match=r"^spec\.export\.formats: tflite: .*does not run"):
        check_tflite(model, [pb.EXPORT_FORMAT_KERAS, pb.EXPORT_FORMAT_TFLITE])


def test_a_tflite_file_that_runs_passes_the_check():
    import tf_keras as keras

    from pruning_worker.export import check_tflite

    L = keras.layers
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization()(L.Conv2D(4, 3)(i))
    check_tflite(
        keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(x))), [pb.EXPORT_FORMAT_KERAS, pb.EXPORT_FORMAT_TFLITE]
    )


@pytest.mark.parametrize("shape", ["(None, 8)", "(None, None, 3)"])
def test_a_model_of_open_dimensions_is_not_run_at_a_size_that_crashes_the_interpreter(shape):
    """An open length or image size is 1 in the converted file's input shape: a valid
    convolution over it made the interpreter kill the worker (a segmentation fault) in the
    check before training. Such a file is not run, and the check passes."""
    import subprocess
    import sys

    conv = "Conv1D(4, 3)" if shape.count(",") == 1 else "Conv2D(4, 3)"
    pool = "GlobalMaxPooling1D" if shape.count(",") == 1 else "GlobalMaxPooling2D"
    script = (
        "import tf_keras as keras\n"
        "from pruning.v1 import pruning_pb2 as pb\n"
        "from pruning_worker.export import check_tflite\n"
        f"i = keras.Input({shape})\n"
        f"x = keras.layers.{pool}()(keras.layers.{conv}(i))\n"
        "check_tflite(keras.Model(i, keras.layers.Dense(2)(x)), [pb.EXPORT_FORMAT_KERAS, pb.EXPORT_FORMAT_TFLITE])\n"
        "print('checked')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "checked" in done.stdout, (done.returncode, done.stderr[-2000:])
