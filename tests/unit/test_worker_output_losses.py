"""A loss per output (TrainingSpec.output_losses) in the worker: what Keras is given, the
accuracy of the classification head only, and the summed loss the scan and Taylor use."""

from __future__ import annotations

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_worker import inputs
from pruning_worker.errors import JobInputError
from pruning_worker.evaluate import evaluate
from pruning_worker.losses import JobLoss

TRAINING = pb.TrainingSpec(
    loss="sparse_categorical_crossentropy_from_logits", output_losses={"reg": "mean_squared_error"}, batch_size=8
)


def _two_heads(as_dict: bool = False):
    import tf_keras as keras

    x = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="fc")(x)
    cls, reg = keras.layers.Dense(4, name="cls")(hidden), keras.layers.Dense(1, name="reg")(hidden)
    return keras.Model(x, {"cls": cls, "reg": reg} if as_dict else [cls, reg])


def _data(n: int = 32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("f4")
    return x, {"cls": np.arange(n) % 4, "reg": rng.normal(size=(n, 1)).astype("f4")}


@pytest.mark.parametrize("as_dict", [False, True])
def test_each_output_is_compiled_with_its_loss_and_only_the_classifier_has_an_accuracy(as_dict):
    import tf_keras as keras

    model = _two_heads(as_dict)
    job_loss = JobLoss.of(model, TRAINING)
    assert job_loss.names == {"cls": TRAINING.loss, "reg": "mean_squared_error"} and job_loss.single is None
    losses = job_loss.keras_loss()
    if as_dict:
        assert isinstance(losses["cls"], keras.losses.SparseCategoricalCrossentropy)
        assert (
            isinstance(losses["reg"], keras.losses.MeanSquaredError) or losses["reg"].__name__ == "mean_squared_error"
        )
    else:
        assert isinstance(losses[0], keras.losses.SparseCategoricalCrossentropy) and len(losses) == 2
    x, y = _data()
    targets = inputs.by_output(model, y)
    model.compile(optimizer="adam", loss=losses, metrics=job_loss.keras_metrics())
    model.fit(x, targets, epochs=1, batch_size=8, verbose=0)
    figures = model.evaluate(x, targets, batch_size=8, verbose=0, return_dict=True)
    assert [k for k in figures if k.endswith("accuracy")] == ["cls_accuracy"]  # no accuracy of real targets
    metrics = evaluate(model, x, targets, TRAINING, "evaluation")
    assert metrics.HasField("accuracy") and metrics.accuracy == pytest.approx(figures["cls_accuracy"])
    # the summed loss the sensitivity scan and Taylor importance compute themselves
    summed = float(job_loss.function()(targets, model(x, training=False)))
    assert summed == pytest.approx(figures["loss"], rel=1e-4)


def test_one_loss_for_every_output_stays_one_loss():
    model = _two_heads()
    same = JobLoss.of(model, pb.TrainingSpec(loss="mean_squared_error"))
    assert same.single == "mean_squared_error" and not same.has_accuracy and same.keras_metrics() == []
    named = JobLoss.of(model, pb.TrainingSpec(loss="mean_squared_error", output_losses={"cls": "mean_squared_error"}))
    assert named.single == "mean_squared_error"


def test_an_unknown_output_is_refused_and_labels_are_checked_under_their_own_loss():
    model = _two_heads()
    with pytest.raises(JobInputError, match=r"spec.training.output_losses: \['box'\] name no output"):
        JobLoss.of(model, pb.TrainingSpec(output_losses={"box": "mean_squared_error"}))
    x, y = _data()
    inputs.check(model, (x, y, x, y), TRAINING)  # real-valued targets under the regression's loss
    with pytest.raises(JobInputError, match="y_train.reg holds"):
        inputs.check(model, (x, y, x, y), pb.TrainingSpec(loss=TRAINING.loss))


def test_the_summed_loss_squeezes_targets_as_compile_does():
    """Targets of shape (n,) against an output of (n, 1): a bare loss function would broadcast
    them to (n, n) and report 2.5 for perfect predictions."""
    import tensorflow as tf

    model = _two_heads()
    job_loss = JobLoss.of(model, pb.TrainingSpec(loss="mean_squared_error"))
    y = np.arange(4, dtype="f4")
    assert float(job_loss.function()([y, y], [tf.constant(y[:, None]), tf.constant(y[:, None])])) == 0.0


def test_the_worker_refuses_class_indices_under_a_categorical_cross_entropy():
    model = _two_heads()
    x, y = _data()
    categorical = pb.TrainingSpec(loss="categorical_crossentropy", output_losses={"reg": "mean_squared_error"})
    with pytest.raises(JobInputError, match=r"y_train.cls samples have shape \[\], but a categorical cross-entropy"):
        inputs.check(model, (x, y, x, y), categorical)
    one_hot = {**y, "cls": np.eye(4, dtype="f4")[y["cls"]]}
    inputs.check(model, (x, one_hot, x, one_hot), categorical)
