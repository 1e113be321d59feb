"""The worker's single-concern modules: schedule figures from TFMOT's own schedule objects,
the data check, and the one mapping of TensorFlow errors to job errors."""

from __future__ import annotations

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_worker import recipe, tferrors
from pruning_worker.errors import JobInputError
from pruning_worker.evaluate import evaluate
from pruning_worker.inputs import check


def _poly(begin=10, end=110, initial=0.5, final=0.8, frequency=10):
    return pb.PruningSpec(
        schedule=pb.PruningSchedule(
            polynomial_decay=pb.PolynomialDecay(
                initial_sparsity=initial,
                final_sparsity=final,
                begin_step=begin,
                end_step=end,
                power=3,
                frequency=frequency,
            )
        )
    )


def test_scheduled_sparsity_follows_the_tfmot_schedule():
    schedule = recipe.make_schedule(_poly(), 1000)
    assert recipe.scheduled_sparsity(schedule, 0) == 0.0
    assert recipe.scheduled_sparsity(schedule, 10) == pytest.approx(0.5)
    assert recipe.scheduled_sparsity(schedule, 110) == pytest.approx(0.8)
    assert recipe.scheduled_sparsity(schedule, 500) == pytest.approx(0.8)
    middle = recipe.scheduled_sparsity(schedule, 60)
    assert middle == pytest.approx(0.8 + (0.5 - 0.8) * 0.5**3, abs=1e-6)
    constant = recipe.make_schedule(
        pb.PruningSpec(
            schedule=pb.PruningSchedule(constant_sparsity=pb.ConstantSparsity(target_sparsity=0.6, frequency=5))
        ),
        100,
    )
    assert recipe.scheduled_sparsity(constant, 50) == pytest.approx(0.6)


def test_schedule_end_is_the_last_step_when_unset():
    schedule = recipe.make_schedule(_poly(begin=0, end=0), 40)
    assert schedule.get_config()["config"]["end_step"] == 40
    with pytest.raises(JobInputError, match="end step"):
        recipe.make_schedule(_poly(begin=50, end=0), 40)


def _model():
    import tf_keras as keras

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_labels_past_the_output_units_are_refused_before_any_step():
    model = _model()
    x = np.zeros((8, 3), "float32")
    good = np.arange(8) % 4
    check(model, (x, good, x, good), pb.TrainingSpec(loss="sparse_categorical_crossentropy_from_logits"))
    with pytest.raises(JobInputError, match=r"y_test .*4 output units"):
        check(model, (x, good, x, good + 4), pb.TrainingSpec(loss="sparse_categorical_crossentropy_from_logits"))
    with pytest.raises(JobInputError, match="y_train"):
        check(model, (x, good - 1, x, good), pb.TrainingSpec(loss="sparse_categorical_crossentropy"))
    targets = (good + 4).astype("float32")
    check(model, (x, targets, x, targets), pb.TrainingSpec(loss="mean_squared_error"))  # targets: their range is free
    with pytest.raises(JobInputError, match=r"y_train holds one integer per sample \(class indices\?\)"):
        # integers under a regression loss on 4 units: each would be broadcast across them
        check(model, (x, good, x, good), pb.TrainingSpec(loss="mean_squared_error"))


def test_class_labels_must_be_whole_indices_of_the_right_shape():
    model, loss = _model(), "sparse_categorical_crossentropy_from_logits"
    x = np.zeros((8, 3), "float32")
    good = np.arange(8) % 4
    check(
        model, (x, good.astype("float32"), x, good[:, None]), pb.TrainingSpec(loss=loss)
    )  # whole floats and (n, 1) are indices
    with pytest.raises(JobInputError, match=r"y_train holds 1.5 \(sample 3\).*whole class indices"):
        check(model, (x, np.where(np.arange(8) == 3, 1.5, good), x, good), pb.TrainingSpec(loss=loss))
    one_hot = np.eye(4, dtype="float32")[good]
    with pytest.raises(JobInputError, match=r"y_test samples have shape \[4\].*categorical_crossentropy"):
        check(model, (x, good, x, one_hot), pb.TrainingSpec(loss=loss))
    check(model, (x, one_hot, x, one_hot), pb.TrainingSpec(loss="categorical_crossentropy"))


@pytest.mark.parametrize(("n", "split", "ok"), [(1, 0.1, False), (2, 0.5, True), (10, 0.95, False), (1, 0.0, True)])
def test_a_validation_split_must_leave_samples_on_both_sides(n, split, ok):
    from pruning_worker.inputs import check_split

    if ok:
        check_split(n, split)
    else:
        with pytest.raises(JobInputError, match="spec.training.validation_split"):
            check_split(n, split)


def test_a_model_of_several_outputs_takes_one_label_array_per_output():
    import tf_keras as keras

    from pruning_worker.inputs import by_output

    inputs = keras.Input((3,))
    model = keras.Model(inputs, [keras.layers.Dense(2, name="a")(inputs), keras.layers.Dense(1, name="b")(inputs)])
    y = np.zeros((8, 2), "float32")
    with pytest.raises(JobInputError, match=r"2 outputs \['a', 'b'\].*y_train.<output name>"):
        by_output(model, y)
    assert by_output(model, {"b": y[:, :1], "a": y})[0] is not None


def test_baseline_evaluation_maps_tensorflow_errors_to_job_errors():
    """Even past the pre-check, a TF error in evaluation is the job's input error, not INTERNAL."""
    x = np.zeros((8, 3), "float32")
    with pytest.raises(JobInputError, match="baseline evaluation failed") as error:
        evaluate(_model(), x, np.full(8, 9), pb.TrainingSpec(batch_size=4), "baseline evaluation")
    assert "Traceback" not in str(error.value) and len(str(error.value)) < 700


def test_step_passes_other_errors_through():
    with pytest.raises(KeyError):
        with tferrors.step("x"):
            raise KeyError("not an input error")


def test_a_model_with_dict_outputs_takes_labels_by_its_keys():
    import tf_keras as keras

    from pruning_worker.inputs import by_output

    inputs = keras.Input((3,))
    model = keras.Model(inputs, {"main": keras.layers.Dense(2, name="m")(inputs), "x": keras.layers.Dense(1)(inputs)})
    y = {"x": np.zeros((8, 1), "float32"), "main": np.zeros((8, 2), "float32")}
    assert sorted(by_output(model, y)) == ["main", "x"]
    with pytest.raises(JobInputError, match=r"outputs \['m', 'x'\].*outputs are \['main', 'x'\]"):
        by_output(model, {"m": y["main"], "x": y["x"]})  # a layer's name is not the output's key
    single = keras.Model(inputs, {"only": keras.layers.Dense(2)(inputs)})
    assert list(by_output(single, y["main"])) == ["only"]
    check(
        single,
        (np.zeros((4, 3)), np.zeros(4), np.zeros((4, 3)), np.zeros(4)),
        pb.TrainingSpec(loss="sparse_categorical_crossentropy"),
    )


def test_labels_of_each_output_are_checked_by_name():
    """A model of two outputs: float labels past one output's units are refused before any step,
    naming the output (before, dict labels were not checked and TensorFlow failed mid-job
    without naming it)."""
    import tf_keras as keras

    inputs = keras.Input((3,))
    # the dict's keys are not the layers' names: labels go by the keys
    model = keras.Model(
        inputs, {"cls": keras.layers.Dense(4, name="dense_a")(inputs), "aux": keras.layers.Dense(2, name="b")(inputs)}
    )
    x = np.zeros((8, 3), "float32")
    good = {"cls": (np.arange(8) % 4).astype("float32"), "aux": (np.arange(8) % 2).astype("float32")}
    loss = "sparse_categorical_crossentropy_from_logits"
    check(model, (x, good, x, good), pb.TrainingSpec(loss=loss))
    bad = {**good, "aux": good["aux"] + 2}
    with pytest.raises(JobInputError, match=r"y_test\.aux holds labels in \[2, 3\], but output 'aux' has 2 output"):
        check(model, (x, good, x, bad), pb.TrainingSpec(loss=loss))
