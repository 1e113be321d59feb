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
