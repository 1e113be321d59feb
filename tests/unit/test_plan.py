"""The checks of spec, model and dataset together that CreateJob runs before a job is queued
(core.plan): the dataset's splits and labels against the model, from the upload's headers."""

from __future__ import annotations

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import job_spec, polynomial_decay, specs
from pruning_core import modelcheck, plan, preflight, recipe, validation


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
    assert field == "spec.dataset.artifact_id" and text.endswith("take the loss categorical_crossentropy_from_logits")
    assert len(text.encode()) <= 200
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


def test_a_model_saved_under_a_mixed_global_policy_is_refused_naming_its_layers(tmp_path):
    """The refusal lists the layers in mixed precision, not the model's own name (nor its
    input), and the summary shows its Dense left whole for it."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layers = [keras.Input((3,)), keras.layers.Flatten(name="flat"), keras.layers.Dense(4, name="fc")]
        keras.Sequential(layers, name="mp").save(tmp_path / "mp.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    info = modelcheck.inspect_model(tmp_path / "mp.keras", 1 << 30).to_dict()
    found = dict(_violations(info, _facts(tmp_path, **_data())))
    assert "mixed precision" in found["spec.model_id"] and found["spec.model_id"].endswith("(layers flat, fc)")
    assert found["spec.pruning.layers"].endswith("left whole: fc (mixed precision)")
    assert {x["name"]: x.get("prunable", False) for x in info["summary"]["layers"]}["fc"] is False


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
    weights.pruning.schedule.polynomial_decay.end_step = 15
    dumped = JobPlan.from_proto(plan.make_plan(weights, model, facts)).to_dict()["spec"]
    assert isinstance(dumped["pruning"]["schedule"]["polynomial_decay"]["end_step"], int)  # a number, not "15"
    assert "structured" not in dict(JobPlan.from_proto(plan.make_plan(weights, model, facts)).summary_lines())


def _keras3_two_heads(tmp_path, units=(4, 2)):
    """A Keras 3 model with dict outputs {"cls": Dense(4), "reg": Dense(2)}."""
    import keras

    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(8, name="fc")(inputs)
    heads = {
        "cls": keras.layers.Dense(units[0], name="cls")(hidden),
        "reg": keras.layers.Dense(units[1], name="reg")(hidden),
    }
    keras.Model(inputs, heads).save(tmp_path / "heads.keras")
    return modelcheck.inspect_model(tmp_path / "heads.keras", 1 << 30).to_dict()


def _by_output(reg, n_train=8, n_test=4):
    arrays = {"x_train": np.zeros((n_train, 3), "f4"), "x_test": np.zeros((n_test, 3), "f4")}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays |= {f"y_{split}.cls": np.arange(n) % 4, f"y_{split}.reg": reg(n)}
    return arrays


def test_each_output_s_labels_are_checked_against_its_units_naming_the_output(tmp_path):
    model = _keras3_two_heads(tmp_path)
    ((field, text),) = _violations(model, _facts(tmp_path, **_by_output(lambda n: np.arange(n) % 4)))
    assert field == "spec.dataset.artifact_id"
    assert "output 'reg' (y_train.reg, y_test.reg) run from 0 to 3" in text and "2 output units" in text
    assert _violations(model, _facts(tmp_path, **_by_output(lambda n: np.zeros(n, "i8")))) == []
    wider = _keras3_two_heads(tmp_path, units=(4, 4))
    assert _violations(wider, _facts(tmp_path, **_by_output(lambda n: np.arange(n) % 4))) == []


def test_regression_labels_under_a_sparse_loss_are_refused_naming_the_array(tmp_path):
    model = _keras3_two_heads(tmp_path)
    facts = _facts(tmp_path, **_by_output(lambda n: np.linspace(0.1, 1.6, n).astype("f4")))
    ((field, text),) = _violations(model, facts)
    assert field == "spec.dataset.artifact_id" and text.startswith("y_train.reg holds 0.1,")
    # one loss for both heads: the regression's targets pass, the class indices do not
    ((_, text),) = _violations(model, facts, loss="mean_squared_error")
    assert text.startswith("y_train.cls holds one integer per sample (class indices?), but mean_squared_error")
    whole = _facts(tmp_path, **_by_output(lambda n: np.zeros(n, "f4")))  # whole numbers in floats are class indices
    assert _violations(model, whole) == []


def test_each_output_takes_its_own_loss(tmp_path):
    """A classification head and a regression head: the regression's real-valued targets pass
    under its own loss, the class labels are still checked under theirs."""
    model = _keras3_two_heads(tmp_path)
    facts = _facts(tmp_path, **_by_output(lambda n: np.linspace(0.1, 1.6, n).astype("f4")))
    assert _violations(model, facts, output_losses={"reg": "mean_squared_error"}) == []
    bad_classes = dict(_by_output(lambda n: np.linspace(0.1, 1.6, n).astype("f4")))
    bad_classes["y_train.cls"] = np.arange(8) % 7
    ((_, text),) = _violations(model, _facts(tmp_path, **bad_classes), output_losses={"reg": "mean_squared_error"})
    assert "output 'cls' (y_train.cls, y_test.cls) run from 0 to 6" in text
    ((field, text),) = _violations(
        model, facts, output_losses={"reg": "mean_squared_error", "box": "mean_squared_error"}
    )
    assert field == "spec.training.output_losses[box]" and "its outputs are ['cls', 'reg']" in text


def test_class_indices_under_a_categorical_cross_entropy_are_refused_up_front(tmp_path):
    """A categorical cross-entropy takes one-hot labels: class indices would fail the worker's
    first step (shapes (n, 1) and (n, 4) are incompatible)."""
    model = _keras3_two_heads(tmp_path)
    indices = _facts(tmp_path, **_by_output(lambda n: np.linspace(0.1, 1.6, n).astype("f4")))
    losses = {"cls": "categorical_crossentropy", "reg": "mean_squared_error"}
    ((field, text),) = _violations(model, indices, output_losses=losses)
    assert field == "spec.dataset.artifact_id"
    assert text.startswith("y_train.cls samples have shape [], but a categorical cross-entropy takes one-hot")
    one_hot = dict(_by_output(lambda n: np.linspace(0.1, 1.6, n).astype("f4")))
    one_hot |= {
        "y_train.cls": np.eye(4, dtype="f4")[np.arange(8) % 4],
        "y_test.cls": np.eye(4, dtype="f4")[[0, 1, 2, 3]],
    }
    assert _violations(model, _facts(tmp_path, **one_hot), output_losses=losses) == []
    binary = {"cls": "binary_crossentropy_from_logits", "reg": "mean_squared_error"}
    ((_, text),) = _violations(model, indices, output_losses=binary)
    assert "a binary cross-entropy on an output of 4 units takes a 0/1 label per unit" in text
    assert _violations(model, _facts(tmp_path, **one_hot), output_losses=binary) == []
    # A regression loss would broadcast each class index across the 4 units, train and succeed
    classes = _facts(tmp_path, **_by_output(lambda n: np.linspace(0.1, 1.6, n).astype("f4")))
    floats = dict(_by_output(lambda n: np.linspace(0.1, 1.6, n).astype("f4")))
    floats |= {"y_train.cls": np.linspace(0.1, 0.9, 8).astype("f4"), "y_test.cls": np.full(4, 0.5, "f4")}
    for loss in ("mean_squared_error", "mean_absolute_error"):
        regression = {"cls": loss, "reg": "mean_squared_error"}
        ((_, text),) = _violations(model, classes, output_losses=regression)
        assert text.startswith(f"y_train.cls holds one integer per sample (class indices?), but {loss} on an output")
        assert _violations(model, _facts(tmp_path, **one_hot), output_losses=regression) == []
        # float targets, broadcast across the units by choice
        assert _violations(model, _facts(tmp_path, **floats), output_losses=regression) == []


def test_output_losses_are_losses_the_service_knows_and_a_budget_needs_a_classification(tmp_path):
    spec = validation.with_defaults(
        job_spec("a" * 64, output_losses={"reg": "huber", "": "mean_squared_error"}, loss="mean_squared_error")
    )
    found = dict(validation.validate(spec))
    assert "not one of" in found["spec.training.output_losses[reg]"]
    assert found["spec.training.output_losses[]"] == "an output's name, not empty"
    model = _keras3_two_heads(tmp_path)
    facts = _facts(tmp_path, **_by_output(lambda n: np.linspace(0.1, 1.6, n).astype("f4")))
    regression = pb.TrainingSpec(output_losses={"cls": "mean_squared_error", "reg": "mean_squared_error"})
    assert plan.budget_problem(regression, model) == (
        "an accuracy budget needs a classification loss on some output; under mean_squared_error there is no "
        "accuracy to keep"
    )
    assert plan.budget_problem(pb.TrainingSpec(output_losses={"reg": "mean_squared_error"}), model) is None
    assert _violations(model, facts, output_losses={"reg": "mean_squared_error"}) == []


def test_a_list_output_model_s_labels_are_checked_per_output(tmp_path):
    model = _model(tmp_path, outputs=2)
    arrays = {k: v for k, v in _data().items() if k.startswith("x_")}
    for split, n in (("train", 8), ("test", 4)):
        arrays |= {f"y_{split}.head0": np.arange(n) % 4, f"y_{split}.head1": np.arange(n) % 6}
    ((_, text),) = _violations(model, _facts(tmp_path, **arrays))
    assert "output 'head1' (y_train.head1, y_test.head1) run from 0 to 5" in text


def test_the_one_output_s_labels_may_be_named_after_it(tmp_path):
    model = _model(tmp_path)
    named = {k: v for k, v in _data().items() if k.startswith("x_")}
    named |= {"y_train.head0": np.arange(8) % 4, "y_test.head0": np.arange(4) % 4}
    assert _violations(model, _facts(tmp_path, **named)) == []
    named["y_train.head0"] = np.arange(8) % 6
    ((_, text),) = _violations(model, _facts(tmp_path, **named))
    assert "output 'head0' (y_train.head0, y_test.head0) run from 0 to 5" in text
    other = {k.replace("head0", "other"): v for k, v in named.items()}
    ((_, text),) = _violations(model, _facts(tmp_path, **other))
    assert "y arrays for outputs ['other']; the model's outputs are ['head0']" in text


def _keras3_with_frozen_layers(tmp_path):
    """Trainable layers around a frozen nested backbone, a frozen Dense and a Bidirectional LSTM."""
    import keras

    inner = keras.Input((6,))
    backbone = keras.Model(inner, keras.layers.Dense(64, name="bb_fc")(inner), name="backbone")
    backbone.trainable = False
    sequence, vector = keras.Input((5, 6), name="sequence"), keras.Input((6,), name="vector")
    seq = keras.layers.Bidirectional(keras.layers.LSTM(4, name="lstm"), name="bi")(sequence)
    flat = keras.layers.Dense(32, trainable=False, name="frozen_fc")(vector)
    x = keras.layers.Concatenate(name="cat")([seq, flat, backbone(vector)])
    x = keras.layers.Dense(16, name="fc")(x)
    keras.Model([sequence, vector], keras.layers.Dense(4, name="out")(x)).save(tmp_path / "frozen.keras")
    return tmp_path / "frozen.keras"


def test_the_plan_prunes_and_splits_the_sparsity_over_the_layers_the_job_prunes(tmp_path):
    """Frozen layers (nested ones too) and the RNNs of a Bidirectional stay whole in the job, so
    the plan leaves them out, and the recipe's per-layer split reaches the target without them."""
    from pruning_core import recipe
    from pruning_worker import bridge
    from pruning_worker import recipe as worker_recipe

    path = _keras3_with_frozen_layers(tmp_path)
    model = modelcheck.inspect_model(path, 1 << 30).to_dict()
    x = {"x_train.sequence": np.zeros((8, 5, 6), "f4"), "x_test.sequence": np.zeros((4, 5, 6), "f4")}
    x |= {"x_train.vector": np.zeros((8, 6), "f4"), "x_test.vector": np.zeros((4, 6), "f4")}
    facts = _facts(tmp_path, **x, y_train=np.arange(8) % 4, y_test=np.arange(4) % 4)
    spec = validation.with_defaults(job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8)))
    assert plan.check(spec, model, facts) == []
    assert recipe.resolve(spec, plan.steps_per_epoch(spec, facts), plan.pruned_layer_weights(spec, model)) == []
    planned = plan.make_plan(spec, model, facts).layers
    work = tmp_path / "work"
    work.mkdir()
    translated = bridge.to_tf_keras(bridge.load_keras3(path, work, 1 << 30), flatten_nested=True)
    assert sorted(x.name for x in planned) == sorted(worker_recipe.selected_layers(translated, spec.pruning))
    assert sorted(spec.pruning.layer_sparsity) == ["fc", "out"]
    weights = sum(x.weights for x in planned)
    assert abs(sum(x.final_sparsity * x.weights for x in planned) / weights - 0.8) < 1e-6


def test_a_selection_of_frozen_layers_only_is_refused_saying_why(tmp_path):
    model = modelcheck.inspect_model(_keras3_with_frozen_layers(tmp_path), 1 << 30).to_dict()
    x = {"x_train.sequence": np.zeros((8, 5, 6), "f4"), "x_test.sequence": np.zeros((4, 5, 6), "f4")}
    x |= {"x_train.vector": np.zeros((8, 6), "f4"), "x_test.vector": np.zeros((4, 6), "f4")}
    facts = _facts(tmp_path, **x, y_train=np.arange(8) % 4, y_test=np.arange(4) % 4)
    spec = validation.with_defaults(
        job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8), include_layers=["frozen_fc", "bb_fc"])
    )
    ((field, text),) = plan.check(spec, model, facts)
    assert field == "spec.pruning.layers" and "left whole: bb_fc (frozen), frozen_fc (frozen)" in text


def test_a_layer_class_name_keras_lacks_is_refused_naming_the_class_meant(tmp_path):
    """--include-type dense answered "selects no prunable layer" without a word of the class;
    --exclude-type dense excluded nothing and pruned the Dense layers it was to keep whole. A
    real class the model lacks is no mistake (a pipeline excluding Embedding for every model)."""
    import tf_keras as keras

    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Conv1D(4, 1, name="c")(keras.layers.Reshape((3, 1), name="r")(inputs))
    keras.Model(inputs, keras.layers.Dense(4, name="out")(keras.layers.Flatten(name="f")(hidden))).save(
        tmp_path / "m.keras"
    )
    model = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    facts = _facts(tmp_path, **_data())
    for field in ("include_types", "exclude_types"):
        ((where, text),) = _violations(model, facts, **{field: ["dense", "Conv2D", "conv2d", "Dence"]})
        assert where == f"spec.pruning.layers.{field}"
        assert text.startswith(
            "not a Keras layer class: 'Dence' (did you mean Dense?), 'conv2d' (did you mean Conv2D?), 'dense' (did "
            "you mean Dense?); class names are case-sensitive; the model's are ['Conv1D', 'Dense', "
        )
    assert _violations(model, facts, include_types=["Dense", "Conv2D"], exclude_types=["Embedding"]) == []
    # classes the service does not take, or a model lacks, are no misspelling
    others = ["MultiHeadAttention", "EinsumDense", "ConvLSTM2D", "TextVectorization", "Convolution2D", "RNN"]
    assert _violations(model, facts, exclude_types=others) == []


@pytest.mark.parametrize("keras_version", [2, 3])
def test_the_plan_warns_of_a_softmax_output_under_a_loss_from_logits(tmp_path, keras_version):
    """What the job would warn of as it starts, the dry run says first (it said the spec fit)."""
    import keras as keras3
    import tf_keras

    keras = tf_keras if keras_version == 2 else keras3
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="fc")(inputs)
    heads = {
        "cls": keras.layers.Dense(4, activation="softmax", name="cls")(hidden),
        "gate": keras.layers.Softmax(name="gate")(keras.layers.Dense(2, name="gate_logits")(hidden)),
        "raw": keras.layers.Dense(4, name="raw")(hidden),
    }
    keras.Model(inputs, heads).save(tmp_path / "m.keras")
    model = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    arrays = {"x_train": np.zeros((8, 3), "f4"), "x_test": np.zeros((4, 3), "f4")}
    for split, n in (("train", 8), ("test", 4)):
        arrays |= {f"y_{split}.{name}": np.arange(n) % 2 for name in ("cls", "gate", "raw")}
    facts = _facts(tmp_path, **arrays)
    spec = validation.with_defaults(job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8)))
    warnings = list(plan.make_plan(spec, model, facts).warnings)
    assert len(warnings) == 2, warnings  # "raw" ends in no activation
    assert warnings[0].startswith(
        "output 'cls' ends in softmax, but its loss sparse_categorical_crossentropy_from_logits"
    )
    assert warnings[1].startswith("output 'gate' ends in softmax")
    spec.training.output_losses["cls"] = "sparse_categorical_crossentropy"  # probabilities: right
    assert [w.split("'")[1] for w in plan.make_plan(spec, model, facts).warnings] == ["gate"]


def test_the_plan_warns_when_the_plain_recipe_s_schedule_misses_its_end_step(tmp_path):
    """The plain recipe is the TFMOT guide's (end at the last step, masks every 100): on 170
    steps no update falls on step 169, and the job fails its sparsity check. The dry run says so."""
    model, facts = _model(tmp_path), _facts(tmp_path, **_data(n_train=85 * 8, n_test=4))

    def planned_on(recipe_name: int, on: plan.DatasetFacts) -> list[str]:
        spec = validation.with_defaults(
            job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8), epochs=2, batch_size=8, validation_split=0.0)
        )
        spec.training.recipe = recipe_name
        recipe.resolve(spec, plan.steps_per_epoch(spec, on))
        return list(plan.make_plan(spec, model, on).warnings)

    def planned(recipe_name: int) -> list[str]:
        return planned_on(recipe_name, facts)

    (warning,) = planned(pb.RECIPE_PLAIN)
    assert warning.startswith("the last mask update comes at step 100, before the schedule's end step 169")
    assert "end about 0.7796 sparse, short of the final 0.8 by more than 0.01" in warning  # as the job measured
    assert planned(pb.RECIPE_KEEP_ACCURACY) == []  # it aligns its end step with its updates
    # within the check's tolerance, but short all the same: said, without the failure
    (close,) = planned_on(pb.RECIPE_PLAIN, _facts(tmp_path, **_data(n_train=250 * 8, n_test=4)))
    assert (
        "before the schedule's end step" in close
        and "sparse, not the final 0.8 (within the sparsity check's 0.01)" in close
    )
    # A longer run's last update falls close enough: the README's mnist job (844 steps, end 843,
    # last update 800) ends 4e-5 short and passes; no warning
    longer = _facts(tmp_path, **_data(n_train=422 * 8, n_test=4))
    spec = validation.with_defaults(
        job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8), epochs=2, batch_size=8, validation_split=0.0)
    )
    spec.training.recipe = pb.RECIPE_PLAIN
    recipe.resolve(spec, plan.steps_per_epoch(spec, longer))
    assert spec.pruning.schedule.polynomial_decay.end_step == 843
    assert list(plan.make_plan(spec, model, longer).warnings) == []


@pytest.mark.parametrize("keras_version", [2, 3])
def test_a_model_of_several_inputs_takes_an_x_array_per_input(tmp_path, keras_version):
    """One plain x_train for a two-input model passed the dry run ("fits") and failed the job on
    the worker with TensorFlow's "expects 2 input(s), but it received 1"."""
    if keras_version == 3:
        import keras
    else:
        import tf_keras as keras
    left, right = keras.Input((3,), name="left"), keras.Input((2,), name="right")
    joined = keras.layers.Concatenate()([left, right])
    keras.Model([left, right], keras.layers.Dense(4, name="out")(joined)).save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    data = _data()
    ((field, text),) = _violations(info, _facts(tmp_path, **data))
    assert field == "spec.dataset.artifact_id" and "2 inputs ['left', 'right']" in text and "x_train.<input" in text

    def split(left_width: int, names=("left", "right")) -> dict:
        x = {f"x_{s}.{names[0]}": np.zeros((n, left_width), "f4") for s, n in (("train", 8), ("test", 4))}
        x |= {f"x_{s}.{names[1]}": np.zeros((n, 2), "f4") for s, n in (("train", 8), ("test", 4))}
        return x | {"y_train": data["y_train"], "y_test": data["y_test"]}

    assert _violations(info, _facts(tmp_path, **split(3))) == []
    ((_, text),) = _violations(info, _facts(tmp_path, **split(5)))
    assert text == "x_train.left samples of shape [5] do not fit the input [3]"
    ((_, text),) = _violations(info, _facts(tmp_path, **split(3, names=("left", "other"))))
    assert text == "x arrays for inputs ['left', 'other']; the model's inputs are ['left', 'right']"


@pytest.mark.parametrize("keras_version", [2, 3])
def test_a_binary_classifier_of_one_sigmoid_unit_is_pointed_to_the_binary_cross_entropy(tmp_path, keras_version):
    """The warning advised sparse_categorical_crossentropy, which passed the dry run and failed
    the job ("labels must be in [0, 0]"): a sparse categorical loss over one unit is refused."""
    import keras as keras3
    import tf_keras

    keras = tf_keras if keras_version == 2 else keras3
    inputs = keras.Input((3,), name="x")
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="yes")(inputs)).save(tmp_path / "m.keras")
    model = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    facts = _facts(tmp_path, **_data(y=lambda n: (np.arange(n) % 2).astype("f4")))
    for loss in (None, "sparse_categorical_crossentropy"):
        ((field, text),) = _violations(model, facts, loss=loss)
        assert field == "spec.training.loss" and "has 1 unit" in text and text.endswith("give binary_crossentropy")
    assert _violations(model, facts, loss="binary_crossentropy") == []
    spec = validation.with_defaults(
        job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8), loss="binary_crossentropy_from_logits")
    )
    (warning,) = plan.make_plan(spec, model, facts).warnings
    assert warning.endswith("give the loss binary_crossentropy")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_sequential_built_with_input_shape_has_one_input(tmp_path, suffix):
    """tf_keras writes an InputLayer and the first layer's batch_input_shape: the summary
    counted two inputs, and the multi-input check refused the commonest Keras 2 model."""
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Dense(8, input_shape=(3,), name="fc"), keras.layers.Dense(4, name="out")])
    model.save(tmp_path / f"m{suffix}")
    info = modelcheck.inspect_model(tmp_path / f"m{suffix}", 1 << 30)
    assert [(t.name, list(t.shape)) for t in info.summary.inputs] == [("fc_input", [3])]
    assert _violations(info.to_dict(), _facts(tmp_path, **_data())) == []


@pytest.mark.parametrize("keras_version", [3, 2])
def test_a_layer_whose_axis_the_keras3_loader_drops_is_refused_before_the_job_runs(tmp_path, keras_version):
    """A Keras 3 model with channels removed (or a tf_keras one asked back as Keras 3) is read
    back by Keras 3's loader of Keras 2 files, which builds a Normalization(axis=None) at axis
    -1: the job trained, then failed INTERNAL on the weights' shapes. Refused at once, naming
    the layer; weight pruning, and Keras 2 files, are not affected."""
    import keras as keras3
    import tf_keras

    keras = keras3 if keras_version == 3 else tf_keras
    inputs = keras.Input((4, 3), name="x")
    norm = keras.layers.Normalization(axis=None, mean=0.5, variance=2.0, name="norm")(inputs)
    hidden = keras.layers.Dense(8, name="fc")(keras.layers.Flatten(name="flat")(norm))
    keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden)).save(tmp_path / "m.keras")
    model = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    facts = _facts(
        tmp_path, **{k: np.zeros((len(v), 4, 3), "f4") if k.startswith("x") else v for k, v in _data().items()}
    )

    def problems(**changes) -> list[tuple[str, str]]:
        spec = validation.with_defaults(job_spec("a" * 64, **changes))
        return [v for v in plan.check(spec, model, facts) if "axis" in v[1]]

    if keras_version == 3:
        ((field, text),) = problems(structured=specs.structured(0.5))
        assert field == "spec.pruning.structured"
        assert text.startswith("layer 'norm' (Normalization, axis=None) cannot come back as Keras 3")
        assert problems(structured=specs.structured(0.5), keras_version=2) == []  # Keras 2 files: no loader
        assert problems(schedule=polynomial_decay(0.5, 0.8)) == []  # weights copied into the upload's own model
    else:
        ((field, text),) = problems(schedule=polynomial_decay(0.5, 0.8), keras_version=3)
        assert field == "spec.export.keras_version" and "layer 'norm' (Normalization, axis=None)" in text
        assert problems(schedule=polynomial_decay(0.5, 0.8)) == []  # back as tf_keras: as it came


@pytest.mark.parametrize("keras_version", [2, 3])
def test_the_plan_of_m_by_n_sparsity_says_which_layer_it_leaves_dense(tmp_path, keras_version):
    """The plan gave a 1-channel conv 2:4's 0.5 with no warning; the job then warned and left it
    dense (too few input channels for a group of 4 to lose 2)."""
    import keras as keras3
    import tf_keras

    keras = keras3 if keras_version == 3 else tf_keras
    inputs = keras.Input((6, 6, 1), name="x")
    conv = keras.layers.Conv2D(8, 3, name="stem")(inputs)
    out = keras.layers.Dense(4, name="out")(keras.layers.Flatten(name="flat")(conv))
    keras.Model(inputs, out).save(tmp_path / "m.keras")
    model = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    assert model["kernel_inputs"] == {"stem": 1, "out": 4 * 4 * 8}
    arrays = {"x_train": np.zeros((8, 6, 6, 1), "f4"), "y_train": np.arange(8) % 4}
    facts = _facts(tmp_path, **arrays, x_test=np.zeros((4, 6, 6, 1), "f4"), y_test=np.arange(4) % 4)
    spec = validation.with_defaults(job_spec("a" * 64, schedule=specs.constant_sparsity(0.5), sparsity_m_by_n=(2, 4)))
    made = plan.make_plan(spec, model, facts)
    assert {layer.name: layer.final_sparsity for layer in made.layers} == {"stem": 0.0, "out": 0.5}
    odd = validation.with_defaults(job_spec("a" * 64, schedule=specs.constant_sparsity(0.5), sparsity_m_by_n=(1, 3)))
    # 128 inputs: 42 whole groups of 3 lose 1 each, the last 2 lose 0 (2 <= 3 - 1)
    assert {layer.name: layer.final_sparsity for layer in plan.make_plan(odd, model, facts).layers}["out"] == (
        pytest.approx(42 / 128)
    )
    # the schedule does not set the sparsity here: no word of its end step
    late = validation.with_defaults(
        job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8, end_step=7, frequency=5), sparsity_m_by_n=(2, 4))
    )
    late_warnings = plan.make_plan(late, model, facts).warnings
    assert not any("mask update" in w for w in late_warnings)
    assert any(w.startswith("layer stem (Conv2D) has 1 input channels: 2:4 sparsity") for w in made.warnings)
    # a final sparsity the pattern overrides is said (the job asked for 0.8 ended at 0.5 silently)
    said = "spec.pruning.schedule: its final sparsity 0.8 is not what the job reaches: sparsity_m_by_n 2:4"
    assert any(w.startswith(said) for w in late_warnings)
    assert not any("is not what the job reaches" in w for w in made.warnings)  # 0.5: the pattern's own
    default = validation.with_defaults(job_spec("a" * 64, sparsity_m_by_n=(1, 4)))  # the SDK's schedule ends at 1/4
    assert default.pruning.schedule.polynomial_decay.final_sparsity == 0.25
    assert not any("is not what the job reaches" in w for w in plan.make_plan(default, model, facts).warnings)


def test_m_by_n_sparsity_on_a_conv1d_is_refused_at_submit(tmp_path):
    """validate_only answered no problem; the job then failed at its start on the Conv1D."""
    import tf_keras as keras

    inputs = keras.Input((12, 3), name="x")
    conv = keras.layers.Conv1D(8, 3, name="c1d")(inputs)
    out = keras.layers.Dense(4, name="out")(keras.layers.Flatten(name="flat")(conv))
    keras.Model(inputs, out).save(tmp_path / "m.keras")
    model = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    arrays = {"x_train": np.zeros((8, 12, 3), "f4"), "y_train": np.arange(8) % 4}
    facts = _facts(tmp_path, **arrays, x_test=np.zeros((4, 12, 3), "f4"), y_test=np.arange(4) % 4)
    spec = validation.with_defaults(job_spec("a" * 64, schedule=specs.constant_sparsity(0.5), sparsity_m_by_n=(2, 4)))
    ((field, text),) = plan.check(spec, model, facts)
    assert field == "spec.pruning.sparsity_m_by_n" and "exclude the layers ['c1d (Conv1D)']" in text
    spec.pruning.layers.exclude_names.append("c1d")
    assert plan.check(spec, model, facts) == []


@pytest.mark.parametrize("keras_version", [2, 3])
@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_m_by_n_sparsity_on_a_layer_not_in_float32_is_refused_naming_it(tmp_path, keras_version, dtype):
    """TFMOT's m-by-n masks are float32: a pattern on a float16 or float64 layer passed
    CreateJob and failed at the first training step with TensorFlow's dtype error."""
    if keras_version == 3:
        import keras
    else:
        import tf_keras as keras
    from pruning_worker import recipe as worker_recipe
    from pruning_worker.errors import JobInputError

    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(8, dtype=dtype, name="wide")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden))
    model.save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    assert info["other_dtypes"] == {"wide": dtype}
    facts = _facts(tmp_path, **_data())
    assert _violations(info, facts) == []  # plain weight pruning takes it
    two_four = {"sparsity_m_by_n": (2, 4), "block_size": (1, 1)}
    ((field, text),) = _violations(info, facts, **two_four)
    assert field == "spec.pruning.sparsity_m_by_n" and f"wide ({dtype})" in text
    assert _violations(info, facts, exclude_layers=["wide"], **two_four) == []
    if keras_version == 2:  # the worker's own check, for a model recorded before this one
        spec = validation.with_defaults(job_spec("a" * 64, **two_four)).pruning
        with pytest.raises(JobInputError, match=f"sparsity_m_by_n: .*the layer wide \\({dtype}\\)"):
            worker_recipe.check_shapes(model, spec, ["wide", "out"])


def test_structured_ratios_for_a_layer_inside_a_nested_tf_keras_model_are_refused_at_submit(tmp_path):
    """The upload's layer list holds a nested model's layers, so CreateJob took a ratio for one;
    channel surgery works on the outer model's own layers and the job failed after loading with
    'the model has no layer'."""
    import tf_keras as keras

    inner_in = keras.Input((3,))
    inner = keras.Model(inner_in, keras.layers.Dense(8, activation="relu", name="in_d1")(inner_in), name="block")
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(8, name="outer_d")(inner(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden))
    model.save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    facts = _facts(tmp_path, **_data())

    def check(ratios):
        spec = job_spec("a" * 64, schedule=None, structured=specs.structured(0.25, layer_ratios=ratios))
        return plan.check(validation.with_defaults(spec), info, facts)

    ((field, text),) = check({"in_d1": 0.5})
    assert field == "spec.pruning.structured.layer_ratios[in_d1]" and "nested in the tf_keras model" in text
    assert check({"outer_d": 0.5}) == []


def _masked(keras, functional=True):
    layers = keras.layers
    if not functional:
        stack = [keras.Input((3,), dtype="int32"), layers.Embedding(10, 4, mask_zero=True), layers.LSTM(4)]
        return keras.Sequential([*stack, layers.Dense(4, name="out")])
    inputs = keras.Input((3,), dtype="int32")
    pooled = layers.GlobalAveragePooling1D()(layers.Embedding(10, 4, mask_zero=True, name="tokens")(inputs))
    return keras.Model(inputs, layers.Dense(4, name="out")(pooled))


@pytest.mark.parametrize("keras_version", [2, 3])
def test_an_h5_export_keras_3_cannot_read_back_is_refused_at_submit(tmp_path, keras_version):
    """Keras 3 writes a functional model's padding mask into an .h5 as an operation
    (NotEqual) its own .h5 loader does not know: the job succeeded with a file nothing loads."""
    if keras_version == 3:
        import keras
    else:
        import tf_keras as keras
    data = {"x_train": np.ones((8, 3), "int32"), "y_train": np.arange(8) % 4}
    data |= {"x_test": np.ones((4, 3), "int32"), "y_test": np.arange(4) % 4}
    facts = _facts(tmp_path, **data)
    _masked(keras).save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    assert info["h5_mask"].startswith("not_equal" if keras_version == 3 else "tokens")  # Keras 3 numbers its ops
    ((field, text),) = _violations(info, facts, exports=("keras", "h5"), keras_version=3)
    assert field == "spec.export.formats" and text.startswith("h5: Keras 3 writes the padding mask")
    assert _violations(info, facts, exports=("keras", "h5"), keras_version=2) == []  # tf_keras writes it whole
    assert _violations(info, facts, exports=("keras",), keras_version=3) == []
    _masked(keras, functional=False).save(tmp_path / "seq.keras")  # a Sequential records no mask operation
    info = modelcheck.inspect_model(tmp_path / "seq.keras", 1 << 30).to_dict()
    assert info["h5_mask"] == "" and _violations(info, facts, exports=("keras", "h5"), keras_version=3) == []


def test_an_h5_export_of_keras_3_tensor_operations_is_refused_at_submit(tmp_path):
    """``x / 255.0`` and ``h + h2`` in a Keras 3 model (which the bridge translates): an h5
    export in Keras 3 passed submit, then failed after the fine-tuning with "Unknown layer:
    'TrueDivide'"; the same model as an .h5 upload was refused as "a Keras class the service
    does not take", where saving it as .keras is the answer."""
    import keras

    inputs = keras.Input((3,))
    scaled = inputs / 255.0
    summed = keras.layers.Dense(4, name="h")(scaled) + keras.layers.Dense(4, name="h2")(scaled)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(summed))
    model.save(tmp_path / "m.keras")
    inspected = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30)
    info = inspected.to_dict()
    assert info["h5_operation"].startswith("true_divide") and info["h5_operation"].endswith("(TrueDivide)")
    # `pruning inspect` lists them: its layer table left them out, so nothing said why an .h5 was refused
    assert [op.split(" ")[1] for op in inspected.summary.operations] == ["(TrueDivide)", "(Add)"]
    from pruning_client.cli import format_summary
    from pruning_client.results import ModelSummary

    shown = format_summary(ModelSummary.from_proto(inspected.summary))
    assert "operations: true_divide" in shown and "an .h5 file in Keras 3 cannot hold them" in shown
    facts = _facts(tmp_path, **_data())
    ((field, text),) = _violations(info, facts, exports=("keras", "h5"), keras_version=3)
    assert field == "spec.export.formats" and text.startswith("h5: Keras 3 writes the tensor operation true_divide")
    assert _violations(info, facts, exports=("keras", "h5"), keras_version=2) == []  # tf_keras: a Rescaling layer
    assert _violations(info, facts, exports=("keras",), keras_version=3) == []

    model.save(tmp_path / "m.h5")
    with pytest.raises(modelcheck.ModelRejected, match=r"tensor operation .* save the model as \.keras"):
        modelcheck.inspect_model(tmp_path / "m.h5", 1 << 30)
    # h + h2 alone: Keras 3 writes it as an Add "layer" holding only its name, which its .h5
    # loader does not read back as the operation; an Add layer proper is taken
    added = keras.layers.Dense(4, name="h")(inputs) + keras.layers.Dense(4, name="h2")(inputs)
    keras.Model(inputs, added).save(tmp_path / "add.h5")
    with pytest.raises(modelcheck.ModelRejected, match=r"'add(_\d+)?' \(Add\), a tensor operation"):
        modelcheck.inspect_model(tmp_path / "add.h5", 1 << 30)
    layer = keras.layers.Add(name="sum")(
        [keras.layers.Dense(4, name="a")(inputs), keras.layers.Dense(4, name="b")(inputs)]
    )
    keras.Model(inputs, layer).save(tmp_path / "layer.h5")
    modelcheck.inspect_model(tmp_path / "layer.h5", 1 << 30)


def test_a_keras_3_h5_upload_holding_a_mask_operation_is_refused_at_upload(tmp_path):
    """Such a file passed the upload and the dry run and failed the job at load, with advice
    about custom objects the user never wrote."""
    import keras

    _masked(keras).save(tmp_path / "m.h5")
    with pytest.raises(modelcheck.ModelRejected, match=r"operation 'not_equal(_\d+)?'.*save it as \.keras"):
        modelcheck.inspect_model(tmp_path / "m.h5", 1 << 30)
    _masked(keras).save(tmp_path / "m.keras")
    modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30)  # the same model as .keras is taken


def test_a_structured_only_job_on_a_model_with_no_layer_to_shrink_is_refused_at_submit(tmp_path):
    """Embedding -> GRU -> Dense (the output): the job fine-tuned the model unchanged and
    SUCCEEDED with a larger file."""
    import keras

    inputs = keras.Input((3,), dtype="int32")
    hidden = keras.layers.GRU(4, name="gru")(keras.layers.Embedding(10, 4, name="tokens")(inputs))
    keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden)).save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    data = {"x_train": np.ones((8, 3), "int32"), "y_train": np.arange(8) % 4}
    facts = _facts(tmp_path, **(data | {"x_test": np.ones((4, 3), "int32"), "y_test": np.arange(4) % 4}))

    def check(**kwargs):
        return plan.check(validation.with_defaults(job_spec("a" * 64, **kwargs)), info, facts)

    ((field, text),) = check(schedule=None, structured=specs.structured(0.5))
    assert field == "spec.pruning.structured" and "its Conv and Dense: out" in text
    weights = check(schedule=polynomial_decay(0.5, 0.8), structured=specs.structured(0.5))
    assert weights == []  # with weight pruning there is work to do
    hidden = keras.layers.Dense(8, name="hidden")(keras.layers.Flatten()(keras.layers.Embedding(10, 4)(inputs)))
    keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden)).save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    assert check(schedule=None, structured=specs.structured(0.5)) == []  # a hidden Dense to shrink
    ((field, text),) = check(schedule=None, structured=specs.structured(0.5), exclude_layers=["hidden"])
    assert field == "spec.pruning.structured" and "its Conv and Dense: hidden, out" in text


def test_a_tf_keras_functional_model_holding_a_nested_one_is_not_asked_back_as_keras_3(tmp_path):
    """Keras 3's loader of Keras 2 files cannot connect its graph: the job failed INTERNAL."""
    import tf_keras as keras

    inner_in = keras.Input((3,))
    block = keras.Model(inner_in, keras.layers.Dense(8, activation="relu")(inner_in), name="block")
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Dense(4, name="out")(block(inputs))).save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    assert info["nested_in_functional"] == "block"
    facts = _facts(tmp_path, **_data())
    ((field, text),) = _violations(info, facts, keras_version=3)
    assert field == "spec.export.keras_version" and "nested model 'block'" in text
    assert _violations(info, facts) == []  # back as tf_keras, as it came
    assert _violations(info, facts, keras_version=3, exports=("tflite",)) == []  # no Keras file asked for
    assert _model(tmp_path)["nested_in_functional"] == ""


def test_an_extreme_final_sparsity_is_warned_of_in_the_plan(tmp_path):
    """A 0.999 job's dry run said the spec fit, and nothing of what that sparsity costs."""
    import tf_keras as keras

    inputs = keras.Input((3,), name="x")
    keras.Model(inputs, keras.layers.Dense(4, name="out")(keras.layers.Dense(8, name="fc")(inputs))).save(
        tmp_path / "m.keras"
    )
    model = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30).to_dict()
    facts = _facts(tmp_path, **_data())

    def warnings(final: float) -> list[str]:
        spec = validation.with_defaults(job_spec("a" * 64, schedule=polynomial_decay(0.5, final)))
        return [w for w in plan.make_plan(spec, model, facts).warnings if "expect a large loss of accuracy" in w]

    (said,) = warnings(0.999)
    assert said.startswith("spec.pruning.schedule: a final sparsity of 0.999 keeps about 0.001 of the pruned")
    assert warnings(0.9) == []


@pytest.mark.parametrize("keras_version", [2, 3])
def test_the_xnnpack_policy_on_a_model_without_its_stem_is_refused_at_submit(tmp_path, keras_version):
    """The dry run said the spec fit; the job then failed after the baseline's evaluation on
    TFMOT's "Could not find Conv2D 3x3 layer with stride 2x2"."""
    import keras as keras3
    import tf_keras

    keras = keras3 if keras_version == 3 else tf_keras
    layers = keras.layers
    inputs = keras.Input((9, 9, 3), name="x")
    plain = layers.Conv2D(4, 3, name="c")(inputs)
    keras.Model(inputs, layers.Dense(4, name="out")(layers.Flatten(name="f")(plain))).save(tmp_path / "plain.keras")
    stem = layers.Conv2D(8, 3, strides=2, padding="valid", name="stem")(layers.ZeroPadding2D(1, name="pad")(inputs))
    pointwise = layers.Conv2D(8, 1, name="pw")(layers.ReLU(name="relu")(stem))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="gap")(pointwise)
    keras.Model(inputs, layers.Dense(4, name="out")(layers.Flatten(name="f")(pooled))).save(tmp_path / "xnn.keras")
    data = {"x_train": np.zeros((8, 9, 9, 3), "f4"), "y_train": np.arange(8) % 4}
    facts = _facts(tmp_path, **data, x_test=np.zeros((4, 9, 9, 3), "f4"), y_test=np.arange(4) % 4)

    plain_info = modelcheck.inspect_model(tmp_path / "plain.keras", 1 << 30).to_dict()
    ((field, text),) = _violations(plain_info, facts, xnnpack_policy=True)
    assert field == "spec.pruning.policy" and text.startswith("PRUNE_FOR_LATENCY_ON_XNNPACK needs a stem of ")
    assert "and a GlobalAveragePooling2D ending each output branch, which the model lacks" in text
    assert _violations(plain_info, facts) == []
    assert (
        _violations(modelcheck.inspect_model(tmp_path / "xnn.keras", 1 << 30).to_dict(), facts, xnnpack_policy=True)
        == []
    )
    # sizes and strides written as one number (a hand-made or older configuration) alike
    conv = {"class_name": "Conv2D", "config": {"kernel_size": 3, "strides": 2, "padding": "valid"}}
    pad = {"class_name": "ZeroPadding2D", "config": {"padding": 1}}
    pool = {"class_name": "GlobalAveragePooling2D", "config": {}}
    assert preflight.xnnpack_missing([pad, conv, pool]) == []
    assert preflight.xnnpack_missing([conv, pool]) and preflight.xnnpack_missing([pad, conv])


@pytest.mark.parametrize(
    ("n_samples", "batch_size", "split", "expected"),
    [(60000, 128, 0.1, 128), (256, 65536, 0.1, 230), (256, 65536, 0.0, 256), (1, 64, 0.0, 1)],
)
def test_a_training_step_takes_the_batch_size_or_every_sample_where_fewer(n_samples, batch_size, split, expected):
    t = pb.TrainingSpec(batch_size=batch_size, validation_split=split)
    assert plan.train_batch(n_samples, t) == expected


def test_samples_of_the_models_size_in_another_shape_are_told_how_to_fit():
    """MNIST's 28 x 28 for a model of (28, 28, 1): the refusal says what the README says to do."""
    model = {"input_shape": [28, 28, 1], "layers": [], "outputs": [], "inputs": []}
    facts = plan.DatasetFacts("spec.dataset.builtin", 60000, 10000, [28, 28])
    text = dict(plan.check(validation.with_defaults(job_spec("a" * 64)), model, facts))["spec.dataset.builtin"]
    assert text.endswith(
        "start the model with a Reshape((28, 28, 1)) to take them, or upload the data shaped [28, 28, 1]"
    )
    other = plan.DatasetFacts("spec.dataset.builtin", 60000, 10000, [32, 32])
    text = dict(plan.check(validation.with_defaults(job_spec("a" * 64)), model, other))["spec.dataset.builtin"]
    assert text.endswith("do not fit the model input [28, 28, 1]")  # another size: no Reshape makes them fit
