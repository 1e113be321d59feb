"""A model with a classification head and a regression head, pruned through the service with a
loss per output: refused up front under one classification loss (the regression's targets are
not class indices), fine-tuned under its own losses, its accuracy the classifier's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pruning_client import InvalidArgument, constant_sparsity, job_spec


def _two_heads(path):
    import tf_keras as keras

    x = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(32, activation="relu", name="fc")(x)
    cls = keras.layers.Dense(3, name="cls")(hidden)
    reg = keras.layers.Dense(1, name="reg")(hidden)
    keras.Model(x, [cls, reg]).save(path)
    return path


def _dataset(path, n_train=256, n_test=64, *, one_hot=False):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.normal(size=(n, 6)).astype("f4")
        arrays[f"x_{split}"] = x
        classes = (x[:, 0] > 0).astype("i8") + (x[:, 1] > 1).astype("i8")  # 3 classes
        arrays[f"y_{split}.cls"] = np.eye(3, dtype="f4")[classes] if one_hot else classes
        arrays[f"y_{split}.reg"] = (x[:, 2:3] * 2.0 + 0.5).astype("f4")  # a real-valued target
    np.savez(path, **arrays)
    return path


def test_a_classifier_and_a_regressor_prune_under_their_own_losses(client, worker, tmp_path):
    model = client.upload_model(_two_heads(tmp_path / "heads.keras"))
    data = client.upload_dataset(_dataset(tmp_path / "data.npz"))
    common = dict(
        dataset=data.id,
        schedule=constant_sparsity(0.5, frequency=1),
        epochs=8,
        batch_size=16,
        seed=1,
        learning_rate=0.01,
        report=False,
    )
    with pytest.raises(InvalidArgument) as refused:  # one classification loss: reg's targets are no classes
        client.submit(job_spec(model.id, **common))
    fields = dict(refused.value.field_violations)
    assert "y_train.reg holds" in fields["spec.dataset.artifact_id"]
    assert (
        "output 'reg' has 1 unit" in fields["spec.training.loss"]
        and "mean_squared_error" in fields["spec.training.loss"]
    )
    spec = job_spec(model.id, output_losses={"reg": "mean_squared_error"}, **common)
    result = client.submit(spec, labels={"test": "output-losses"}).result(timeout=600)
    raw = result.raw
    # the accuracy is the classifier's alone; the loss the sum of both heads'
    assert raw.baseline.HasField("accuracy") and raw.pruned.HasField("accuracy")
    assert 0.0 <= result.pruned_accuracy <= 1.0 and result.accuracy_delta is not None
    assert math.isfinite(raw.pruned.loss) and raw.history and all(e.HasField("accuracy") for e in raw.history)
    assert raw.pruned_kernel_sparsity == pytest.approx(0.5, abs=0.02)
    # the regression head was fine-tuned on its own loss: its test error fell from the
    # untrained model's
    import tf_keras as keras

    arrays = np.load(tmp_path / "data.npz")
    x, target = arrays["x_test"], arrays["y_test.reg"]

    def reg_mse(path):
        loaded = keras.models.load_model(path, compile=False)
        return float(np.mean((loaded.predict(x, verbose=0)[1] - target) ** 2))

    before, after = (
        reg_mse(tmp_path / "heads.keras"),
        reg_mse(client.download(raw.artifacts[0].id, tmp_path / "p.keras")),
    )
    assert after < 0.5 * before, (before, after)


def test_a_budget_on_a_model_whose_outputs_all_regress_is_refused(client, tmp_path):
    """No output has a classification loss, so there is no accuracy to keep: refused at once,
    not after every trial of the search failed to find one."""
    from pruning_client import accuracy_budget

    model = client.upload_model(_two_heads(tmp_path / "heads.keras"))
    data = client.upload_dataset(_dataset(tmp_path / "data.npz", one_hot=True))  # a target per unit
    regress = {"cls": "mean_squared_error", "reg": "mean_squared_error"}
    spec = job_spec(model.id, dataset=data.id, output_losses=regress, budget=accuracy_budget(max_loss_pp=1.0))
    with pytest.raises(InvalidArgument) as refused:
        client.submit(spec)
    ((field, text),) = refused.value.field_violations
    assert field == "spec.training.output_losses" and "needs a classification loss on some output" in text
