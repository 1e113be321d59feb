"""Knowledge distillation from the model as uploaded (pruning_worker.distill): the loss is the
formula it claims, the accuracy reads the label column, models and losses that cannot distill
are named, and a pruned model fits on the packed targets with TFMOT's callback unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from pruning.v1 import pruning_pb2 as pb
from pruning_client import job_spec
from pruning_core import recipe, validation
from pruning_worker import distill


def _classifier(softmax: bool = False, outputs: int = 1) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    heads = [keras.layers.Dense(4, activation="softmax" if softmax else None)(hidden) for _ in range(outputs)]
    return keras.Model(inputs, heads if outputs > 1 else heads[0])


def _data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 4, size=n)


def test_the_loss_is_alpha_task_plus_t_squared_kl_of_the_softened_outputs():
    rng = np.random.default_rng(1)
    labels = np.array([0, 3, 1], dtype=np.float32)
    teacher, student = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(3, 4)).astype("float32")
    y = np.concatenate([labels[:, None], teacher], axis=1)
    alpha, t = 0.3, 2.5
    got = float(distill.DistillationLoss(alpha, t, from_logits=True)(y, student))

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    task = -np.log(softmax(student)[np.arange(3), labels.astype(int)])
    p, q = softmax(teacher / t), softmax(student / t)
    kl = (p * (np.log(p) - np.log(q))).sum(axis=1)
    assert got == pytest.approx(float(np.mean(alpha * task + (1 - alpha) * t * t * kl)), rel=1e-5)
    # alpha = 1 is the task loss alone; a student equal to its teacher adds nothing.
    only_task = float(distill.DistillationLoss(1.0, t, True)(y, student))
    assert only_task == pytest.approx(float(np.mean(task)), rel=1e-5)
    same = float(distill.DistillationLoss(0.0, t, True)(y, teacher))
    assert same == pytest.approx(0.0, abs=1e-6)


def test_softmax_outputs_distill_through_their_logarithms():
    model = _classifier(softmax=True)
    x, y = _data()
    prepared = distill.prepare(model, x, y, "sparse_categorical_crossentropy", 0.5, 4.0, 32)
    assert isinstance(prepared, distill.Distillation)
    probs = model.predict(x, verbose=0)
    assert np.allclose(prepared.targets[:, 0], y) and np.allclose(prepared.targets[:, 1:], np.log(probs), atol=1e-5)
    # the student equal to the teacher: only the task term is left
    loss = float(prepared.loss(prepared.targets, probs))
    task = float(keras.losses.sparse_categorical_crossentropy(y, probs).numpy().mean())
    assert loss == pytest.approx(0.5 * task, rel=1e-4)


def test_the_accuracy_reads_the_label_column():
    metric = distill.LabelAccuracy()
    y = np.array([[1, 9, 9, 9, 9], [2, 0, 0, 0, 0]], dtype=np.float32)
    metric.update_state(y, np.array([[0, 5, 0, 0], [0, 5, 0, 0]], dtype=np.float32))
    assert metric.name == "accuracy" and float(metric.result()) == 0.5


@pytest.mark.parametrize(
    ("model", "loss", "y", "says"),
    [
        (_classifier(), "binary_crossentropy", None, "not a sparse categorical"),
        (_classifier(outputs=2), "sparse_categorical_crossentropy_from_logits", None, "2 outputs"),
        (_classifier(), "sparse_categorical_crossentropy_from_logits", np.zeros((64, 4)), "one integer class"),
    ],
)
def test_what_cannot_distill_is_named(model, loss, y, says):
    x, labels = _data()
    reason = distill.prepare(model, x, labels if y is None else y, loss, 0.5, 4.0, 32)
    assert isinstance(reason, str) and says in reason


def test_a_pruned_model_fits_on_packed_targets_and_its_masks_hold():
    model = _classifier()
    x, y = _data(256)
    prepared = distill.prepare(model, x, y, "sparse_categorical_crossentropy_from_logits", 0.5, 4.0, 32)
    assert isinstance(prepared, distill.Distillation)
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.75, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(optimizer="adam", loss=prepared.loss, metrics=prepared.metrics())
    history = pruned.fit(
        x,
        prepared.targets,
        epochs=2,
        batch_size=32,
        validation_split=0.25,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    assert all(np.isfinite(history.history["loss"]))
    kernel = tfmot.sparsity.keras.strip_pruning(pruned).layers[1].kernel.numpy()
    assert float(np.mean(kernel == 0)) == pytest.approx(0.75, abs=0.01)
    assert tf.executing_eagerly()


def test_the_recipe_distills_classifiers_by_default_and_never_under_plain():
    def resolved(**kwargs) -> pb.TrainingSpec:
        spec = validation.with_defaults(job_spec("ab" * 32, **kwargs))
        recipe.resolve(spec, 100)
        return spec.training

    t = resolved()
    assert t.distillation and t.distillation_alpha == 0.5 and t.distillation_temperature == 4.0
    assert not resolved(recipe="plain").distillation
    assert not resolved(loss="binary_crossentropy").distillation
    spec = validation.with_defaults(job_spec("ab" * 32))
    spec.training.distillation = False  # the client's choice stands
    recipe.resolve(spec, 100)
    assert not spec.training.distillation and spec.training.distillation_alpha == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("distillation_alpha", 1.5),
        ("distillation_alpha", float("nan")),
        ("distillation_temperature", 0.5),
        ("distillation_temperature", 1e300),
    ],
)
def test_bad_distillation_settings_name_the_field(field, value):
    spec = job_spec("ab" * 32)
    setattr(spec.training, field, value)
    assert f"spec.training.{field}" in [f for f, _ in validation.validate(spec)]
