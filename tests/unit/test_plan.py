"""The checks of spec, model and dataset together that CreateJob runs before a job is queued
(core.plan): the dataset's splits and labels against the model, from the upload's headers."""

from __future__ import annotations

import numpy as np
import pytest

from pruning_client import job_spec, polynomial_decay, specs
from pruning_core import modelcheck, plan, validation


def _model(tmp_path, outputs=1):
    import tf_keras as keras

    inputs = keras.Input((3,), name="x")
    heads = [keras.layers.Dense(4, name=f"head{i}")(inputs) for i in range(outputs)]
    model = keras.Model(inputs, heads if outputs > 1 else heads[0])
    model.save(tmp_path / "m.keras")
    return modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()


def _facts(tmp_path, **arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    return plan.DatasetFacts.of_upload({"arrays": modelcheck.inspect_dataset(tmp_path / "d.npz", 1 << 30)})


def _violations(model, facts, **training):
    spec = validation.with_defaults(job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8), **training))
    return plan.check(spec, model, facts)


def _data(n_train=8, n_test=4, y=lambda n: np.arange(n) % 4):
    return {
        "x_train": np.zeros((n_train, 3), "f4"),
        "y_train": y(n_train),
        "x_test": np.zeros((n_test, 3), "f4"),
        "y_test": y(n_test),
    }


def test_data_that_fits_has_no_violations(tmp_path):
    assert _violations(_model(tmp_path), _facts(tmp_path, **_data()), validation_split=0.25) == []


def test_an_empty_split_is_refused(tmp_path):
    (field, text), *_ = _violations(_model(tmp_path), _facts(tmp_path, **_data(n_test=0)))
    assert field == "spec.dataset.artifact_id" and "hold 8 and 0" in text


@pytest.mark.parametrize(("n", "split"), [(1, 0.1), (10, 0.95)])
def test_a_validation_split_leaving_a_side_empty_is_refused(tmp_path, n, split):
    found = _violations(_model(tmp_path), _facts(tmp_path, **_data(n_train=n)), validation_split=split)
    assert [f for f, _ in found] == ["spec.training.validation_split"]


def test_one_hot_labels_with_a_sparse_loss_are_refused(tmp_path):
    data = _data(y=lambda n: np.eye(4, dtype="f4")[np.arange(n) % 4])
    model, facts = _model(tmp_path), _facts(tmp_path, **data)
    ((field, text),) = _violations(model, facts)
    assert field == "spec.dataset.artifact_id" and "categorical_crossentropy" in text
    assert _violations(model, facts, loss="categorical_crossentropy") == []


def test_a_model_of_several_outputs_takes_a_label_array_per_output(tmp_path):
    model = _model(tmp_path, outputs=2)
    ((_, text),) = _violations(model, _facts(tmp_path, **_data()), loss="mean_squared_error")
    assert "2 outputs ['head0', 'head1']" in text
    by_output = {k: v for k, v in _data().items() if k.startswith("x_")}
    for split, n in (("train", 8), ("test", 4)):
        by_output |= {f"y_{split}.head0": np.zeros((n, 4), "f4"), f"y_{split}.zzz": np.zeros((n, 4), "f4")}
    ((_, text),) = _violations(model, _facts(tmp_path, **by_output), loss="mean_squared_error")
    assert "['head0', 'zzz']" in text


@pytest.mark.parametrize("keras_version", [2, 3])
def test_a_model_in_mixed_precision_is_refused_for_weight_pruning(tmp_path, keras_version):
    if keras_version == 3:
        import keras
    else:
        import tf_keras as keras
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(8, dtype="mixed_float16", name="half")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, dtype="float32", name="out")(hidden))
    model.save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    assert info["mixed_precision"] == ["half"]
    ((field, text),) = _violations(info, _facts(tmp_path, **_data()))
    assert field == "spec.model_id" and "mixed precision" in text and "float32 dtype policy" in text[:120]
    structured = validation.with_defaults(job_spec("a" * 64, schedule=None, structured=specs.structured(0.5)))
    ((field, text),) = plan.check(structured, info, _facts(tmp_path, **_data()))
    assert field == "spec.model_id" and "mixed precision" in text
    assert _violations(_model(tmp_path), _facts(tmp_path, **_data())) == []  # float32 throughout


def test_the_plan_of_structured_pruning_only_lists_no_weight_schedule(tmp_path):
    from pruning_client.results import JobPlan

    model, facts = _model(tmp_path), _facts(tmp_path, **_data())
    only = validation.with_defaults(
        job_spec("a" * 64, schedule=None, structured=specs.structured(0.25, layer_ratios={"head0": 0.5}))
    )
    shown = dict(JobPlan.from_proto(plan.make_plan(only, model, facts)).summary_lines())
    assert plan.make_plan(only, model, facts).layers == []  # no layer gets a final sparsity of 0
    assert shown["pruning schedule"] == "none (structured pruning only)"
    assert shown["structured"].startswith("channel ratio 0.25, importance l1, head0 0.5")
    weights = validation.with_defaults(job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8)))
    assert [x.name for x in plan.make_plan(weights, model, facts).layers] == ["head0"]
    assert "structured" not in dict(JobPlan.from_proto(plan.make_plan(weights, model, facts)).summary_lines())
