"""The fine-tuning recipe: resolved at CreateJob against the real step count, so the final
sparsity falls on a mask update TFMOT really runs, early enough to recover; and the worker's
checks of what training produced (non-finite data, a missed target)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import constant_sparsity, job_spec, polynomial_decay
from pruning_core import recipe, validation
from pruning_worker import recipe as worker_recipe
from pruning_worker.errors import JobInputError, OutcomeError
from pruning_worker.inputs import check


def _resolved(steps_per_epoch: int, epochs: int = 2, **kwargs) -> pb.JobSpec:
    kwargs.setdefault("schedule", polynomial_decay(0.5, 0.8))
    spec = validation.with_defaults(job_spec("m" * 64, epochs=epochs, **kwargs))
    recipe.resolve(spec, steps_per_epoch)
    return spec


def _tfmot_applies_final(spec: pb.JobSpec, total: int) -> tuple[int, float]:
    """The last step in [0, total) on which TFMOT updates the masks, and the sparsity it sets."""
    schedule = worker_recipe.make_schedule(spec.pruning, total)
    last, sparsity = -1, 0.0
    for step in range(total):
        prune, value = schedule(np.int64(step))
        if bool(prune):
            last, sparsity = step, float(value)
    return last, sparsity


# 422 steps an epoch: MNIST at batch 128 with a tenth kept for validation; 7 and 1 are edge cases.
@pytest.mark.parametrize("steps_per_epoch, epochs", [(422, 2), (422, 3), (47, 2), (7, 1), (1, 3)])
def test_keep_accuracy_reaches_the_final_sparsity_on_a_mask_update_with_steps_left(steps_per_epoch, epochs):
    spec = _resolved(steps_per_epoch, epochs)
    total = steps_per_epoch * epochs
    decay = spec.pruning.schedule.polynomial_decay
    assert recipe.steps_reaching_final(decay)
    assert decay.end_step <= max(total - 1, 1)
    last, sparsity = _tfmot_applies_final(spec, total)
    if total > 1:
        assert last == decay.end_step and sparsity == pytest.approx(0.8)
    if total >= 30:  # about half of the steps is left to recover at the final sparsity
        assert 0.4 * total <= decay.end_step <= 0.5 * total
        assert 1 <= decay.frequency <= 100


def test_a_frequency_given_is_kept_and_the_end_aligned_to_it():
    spec = _resolved(422, schedule=polynomial_decay(0.5, 0.8, frequency=100))
    decay = spec.pruning.schedule.polynomial_decay
    assert decay.frequency == 100 and decay.end_step % 100 == 0
    assert _tfmot_applies_final(spec, 844) == (decay.end_step, pytest.approx(0.8))


def test_an_end_step_given_is_kept_and_the_frequency_divides_the_ramp():
    spec = _resolved(422, schedule=polynomial_decay(0.5, 0.8, begin_step=3, end_step=503))
    decay = spec.pruning.schedule.polynomial_decay
    assert decay.end_step == 503 and (503 - 3) % decay.frequency == 0 and decay.frequency > 1
    assert _tfmot_applies_final(spec, 844) == (503, pytest.approx(0.8))


def test_keep_accuracy_learning_rate_decay_and_patience():
    spec = _resolved(422)
    t = spec.training
    assert t.recipe == pb.RECIPE_KEEP_ACCURACY
    assert t.learning_rate == pytest.approx(recipe.DEFAULT_LEARNING_RATES["adam"] * recipe.FINE_TUNE_LR_FACTOR)
    assert t.learning_rate_decay and t.early_stopping_patience == recipe.patience(t.epochs) == recipe.PATIENCE
    assert not _resolved(422, validation_split=0.0).training.early_stopping_patience  # nothing to watch
    assert _resolved(422, epochs=30).training.early_stopping_patience == 6  # a fifth of a long run


def test_plain_is_the_guide_recipe():
    spec = _resolved(422, epochs=2)
    spec.training.recipe = pb.RECIPE_PLAIN
    plain = validation.with_defaults(job_spec("m" * 64, epochs=2, schedule=polynomial_decay(0.5, 0.8)))
    plain.training.recipe = pb.RECIPE_PLAIN
    recipe.resolve(plain, 422)
    t = plain.training
    assert t.learning_rate == pytest.approx(1e-3) and not t.learning_rate_decay and t.early_stopping_patience == 0
    assert plain.pruning.schedule.polynomial_decay.end_step == 843


def test_plain_refuses_a_frequency_longer_than_its_schedule():
    plain = validation.with_defaults(job_spec("m" * 64, epochs=1, schedule=polynomial_decay(0.5, 0.8)))
    plain.training.recipe = pb.RECIPE_PLAIN
    ((field, text),) = recipe.resolve(plain, 9)  # 9 steps, masks every 100: none would apply the sparsity
    assert field == "spec.pruning.schedule.polynomial_decay.frequency" and "at most 8" in text
    enough = validation.with_defaults(job_spec("m" * 64, epochs=1, schedule=polynomial_decay(0.5, 0.8)))
    enough.training.recipe = pb.RECIPE_PLAIN
    assert recipe.resolve(enough, 150) == []  # the guide's recipe: it runs, and may miss (test_recipe_jobs.py)


def test_explicit_choices_win():
    spec = validation.with_defaults(job_spec("m" * 64, schedule=polynomial_decay(0.5, 0.8), learning_rate=0.01))
    spec.training.early_stopping_patience = 0
    spec.training.learning_rate_decay = False
    recipe.resolve(spec, 100)
    t = spec.training
    assert (t.learning_rate, t.early_stopping_patience, t.learning_rate_decay) == (0.01, 0, False)


def test_constant_sparsity_gets_a_frequency_and_its_range():
    spec = _resolved(10, schedule=constant_sparsity(0.6))
    c = spec.pruning.schedule.constant_sparsity
    assert c.frequency >= 1 and c.end_step == 19
    assert _tfmot_applies_final(spec, 20)[1] == pytest.approx(0.6)


@pytest.mark.parametrize("frequency, ok", [(2**62, False), (20, False), (19, True), (5, True)])
def test_constant_sparsity_refuses_a_frequency_that_puts_no_update_in_the_fine_tuning(frequency, ok):
    """TFMOT updates at begin_step + k * frequency: a frequency past the fine-tuning's steps
    trained in full and then failed the sparsity check (0.0000 sparse)."""
    spec = validation.with_defaults(job_spec("m" * 64, epochs=2, schedule=constant_sparsity(0.6, frequency=frequency)))
    violations = recipe.resolve(spec, 10)  # 20 steps: the last is 19
    assert (violations == []) == ok
    if not ok:
        ((field, text),) = violations
        assert field == "spec.pruning.schedule.constant_sparsity.frequency" and "at most 19" in text


# (begin_step, end_step, frequency) on 20 steps, and whether TFMOT applied the sparsity there
# (a tf_keras Dense fine-tuned 20 steps with UpdatePruningStep: 0.5 sparse, or 0.0): it counts
# the steps from 1, and updates at begin_step itself when that is not 0.
@pytest.mark.parametrize(
    "begin, end, frequency, applied",
    [(5, 19, 100, True), (0, 20, 20, True), (0, 19, 20, False), (20, 20, 100, True), (0, 19, 19, True)],
)
def test_constant_sparsity_s_first_update_is_where_tfmot_makes_it(begin, end, frequency, applied):
    schedule = constant_sparsity(0.6, begin_step=begin, end_step=end, frequency=frequency)
    spec = validation.with_defaults(job_spec("m" * 64, epochs=2, schedule=schedule))
    assert (recipe.resolve(spec, 10) == []) == applied


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, 1e300, 100.5])
def test_a_non_finite_or_absurd_learning_rate_is_refused(value):
    """1e300 passed CreateJob and failed the job after its baseline with a Python error."""
    spec = job_spec("m" * 64, schedule=polynomial_decay(0.5, 0.8), learning_rate=0.001)
    spec.training.learning_rate = value
    assert dict(validation.validate(spec))["spec.training.learning_rate"].startswith("must be in [0, 100]")
    spec.training.learning_rate = 100.0
    assert "spec.training.learning_rate" not in dict(validation.validate(spec))


def _model():
    import tf_keras as keras

    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(4)(inputs))


@pytest.mark.parametrize("where", ["x_train", "x_test"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_data_is_refused_before_any_step(where, value):
    arrays = {
        "x_train": np.zeros((8, 3), "float32"),
        "y_train": np.zeros(8, "int64"),
        "x_test": np.zeros((4, 3), "float32"),
        "y_test": np.zeros(4, "int64"),
    }
    arrays[where][2, 1] = value
    with pytest.raises(JobInputError, match=rf"{where} holds 1 NaN or infinite values \(the first in sample 2\)"):
        check(_model(), tuple(arrays.values()), pb.TrainingSpec(loss="sparse_categorical_crossentropy_from_logits"))


@pytest.mark.parametrize("where", ["x_train", "x_test"])
@pytest.mark.parametrize("value", [1e39, -1e300])
def test_float64_data_beyond_float32_s_range_is_refused_as_the_data_s(where, value):
    """Finite in float64, infinite in the float32 model: in x_train the job failed blaming the
    pruning masks, in x_test it SUCCEEDED with an infinite input in its evaluation."""
    arrays = {
        "x_train": np.zeros((8, 3), "float64"),
        "y_train": np.zeros(8, "int64"),
        "x_test": np.zeros((4, 3), "float64"),
        "y_test": np.zeros(4, "int64"),
    }
    arrays[where][2, 1] = value
    with pytest.raises(JobInputError, match=rf"{where} holds 1 values beyond float32's range .*the first in sample 2"):
        check(_model(), tuple(arrays.values()), pb.TrainingSpec(loss="sparse_categorical_crossentropy_from_logits"))
    arrays[where][2, 1] = 3e38  # within float32's range
    check(_model(), tuple(arrays.values()), pb.TrainingSpec(loss="sparse_categorical_crossentropy_from_logits"))


def _result(sparsities: dict[str, tuple[int, float]]) -> pb.PruneResult:
    result = pb.PruneResult()
    zeros = 0.0
    for name, (weights, sparsity) in sparsities.items():
        result.layers.add(name=name, pruned=True, weights=weights, sparsity=sparsity, target_sparsity=0.8)
        zeros += weights * sparsity
    result.pruned_kernel_sparsity = zeros / sum(w for w, _ in sparsities.values())
    return result


def test_a_missed_target_fails_and_rounding_does_not():
    p = polynomial_decay(0.5, 0.8)
    spec = pb.PruningSpec(schedule=p)
    worker_recipe.check_target(_result({"conv": (108, 86 / 108), "dense": (20280, 0.8)}), spec)
    with pytest.raises(OutcomeError, match="layer dense"):
        worker_recipe.check_target(_result({"conv": (108, 0.7963), "dense": (20280, 0.778)}), spec)


def test_kernels_sparser_than_the_target_pass_only_where_the_upload_s_own_zeros_account_for_it():
    """A model pruned before ends sparser than a lower target: not a failed job, a note. The
    allowance goes one way and only as far as the zeros the layers came with."""
    spec = pb.PruningSpec(schedule=polynomial_decay(0.5, 0.8))
    sparser = _result({"conv": (108, 0.8), "dense": (20280, 0.95)})
    with pytest.raises(OutcomeError, match="layer dense at 0.9500 for 0.8000"):
        worker_recipe.check_target(sparser, spec)  # nothing says the model came sparse
    note = worker_recipe.check_target(sparser, spec, {"conv": 0.1, "dense": 0.95})
    assert note is not None and "above the target 0.8000" in note and "dense 0.9500 sparse as uploaded" in note
    assert "conv" in note  # its own zeros named too, though the target covers them
    with pytest.raises(OutcomeError, match="layer dense"):  # more zeros than the upload had
        worker_recipe.check_target(sparser, spec, {"conv": 0.1, "dense": 0.85})
    with pytest.raises(OutcomeError, match="layer dense at 0.5000"):  # less sparse: the allowance does not apply
        worker_recipe.check_target(_result({"conv": (108, 0.8), "dense": (20280, 0.5)}), spec, {"dense": 0.95})
    assert (
        worker_recipe.check_target(_result({"conv": (108, 0.8), "dense": (20280, 0.8)}), spec, {"dense": 0.9}) is None
    )
    # one layer's own zeros never hide another's shortfall: dense short of its target still fails
    short = _result({"conv": (20280, 0.99), "dense": (20280, 0.65)})
    with pytest.raises(OutcomeError, match="layer dense at 0.6500 for 0.8000"):
        worker_recipe.check_target(short, spec, {"conv": 0.99})


def test_a_missed_target_after_a_diverged_fine_tuning_says_it_diverged():
    """A learning rate of 1e30 blew the weights up, and the job blamed the mask schedule."""
    spec = pb.PruningSpec(schedule=polynomial_decay(0.5, 0.8))
    result = _result({"conv": (108, 0.0), "dense": (20280, 0.31)})
    result.baseline.loss = 2.3
    result.history.add(epoch=1, loss=1.7e30)
    result.pruned.loss = 4.1e29
    with pytest.raises(OutcomeError, match=r"the fine-tuning diverged: its loss went from 2\.3 to 1\.7e\+30") as failed:
        worker_recipe.check_target(result, spec)
    assert "lower the learning rate" in str(failed.value) and "mask update" not in str(failed.value)
    result.history[0].loss = float("nan")
    with pytest.raises(OutcomeError, match="its loss became nan"):
        worker_recipe.check_target(result, spec)
    calm = _result({"conv": (108, 0.0), "dense": (20280, 0.31)})  # no divergence: the schedule is suspect
    calm.baseline.loss, calm.pruned.loss = 2.3, 0.9
    calm.history.add(epoch=1, loss=1.1)
    with pytest.raises(OutcomeError, match="Check that a mask update falls on the schedule's end step"):
        worker_recipe.check_target(calm, spec)


def test_a_frequency_past_the_last_step_is_refused():
    spec = validation.with_defaults(job_spec("m" * 64, epochs=1, schedule=polynomial_decay(0.5, 0.8, frequency=100)))
    violations = dict(recipe.resolve(spec, 15))
    assert "spec.pruning.schedule.polynomial_decay.frequency" in violations


def test_small_layers_stay_denser_and_the_total_holds():
    weights = {"conv2d": 120, "dense": 20290}
    for target in (0.8, 0.9, 0.95):
        layers = recipe.allocate(target, weights)
        assert layers["conv2d"] == recipe.SMALL_LAYER_SPARSITY < layers["dense"] < 1
        total = sum(layers[n] * w for n, w in weights.items()) / sum(weights.values())
        assert total == pytest.approx(target)
    assert recipe.allocate(0.8, {"a": 1000, "b": 1200}) == {}  # no small layer
    assert recipe.allocate(0.4, weights) == {}  # already at most the small layers' cap
    assert recipe.allocate(0.99, {"a": 10, "b": 90}) == {}  # the big layer cannot make up for it


def test_keep_accuracy_allocates_per_layer_unless_told_otherwise():
    spec = _resolved(422)
    assert not spec.pruning.layer_sparsity  # no layer weights given
    spec = validation.with_defaults(job_spec("m" * 64, schedule=polynomial_decay(0.5, 0.9)))
    recipe.resolve(spec, 422, {"conv2d": 120, "dense": 20290})
    assert spec.pruning.layer_sparsity["conv2d"] == 0.5 and spec.pruning.layer_sparsity["dense"] > 0.9
    spec = validation.with_defaults(job_spec("m" * 64, schedule=polynomial_decay(0.5, 0.9)))
    spec.pruning.layer_sparsity["conv2d"] = 0.9
    recipe.resolve(spec, 422, {"conv2d": 120, "dense": 20290})
    assert dict(spec.pruning.layer_sparsity) == {"conv2d": pytest.approx(0.9)}  # the client's choice stands
    plain = validation.with_defaults(job_spec("m" * 64, schedule=polynomial_decay(0.5, 0.9)))
    plain.training.recipe = pb.RECIPE_PLAIN
    recipe.resolve(plain, 422, {"conv2d": 120, "dense": 20290})
    assert not plain.pruning.layer_sparsity


def test_a_layer_schedule_ends_at_its_own_sparsity():
    spec = _resolved(422)
    schedule = worker_recipe.make_schedule(spec.pruning, 844)
    end = spec.pruning.schedule.polynomial_decay.end_step
    own = worker_recipe.for_layer(schedule, 0.5)
    assert worker_recipe.scheduled_sparsity(own, end) == pytest.approx(0.5)
    assert worker_recipe.scheduled_sparsity(own, 0) == pytest.approx(0.5)  # initial capped at the final
    assert worker_recipe.scheduled_sparsity(schedule, end) == pytest.approx(0.8)


def test_the_sensitivity_split_gives_the_robust_layer_the_most():
    from pruning_worker import sensitivity

    grid = sensitivity.GRID
    losses = {"fragile": [1.0 + 10 * s**2 for s in grid], "robust": [1.0 + 0.1 * s**2 for s in grid]}
    sizes = {"fragile": 1000, "robust": 1000}
    split = sensitivity.allocate(0.7, losses, sizes)
    assert split["robust"] > 0.7 > split["fragile"]
    assert (split["fragile"] * 1000 + split["robust"] * 1000) / 2000 == pytest.approx(0.7)


def test_the_sensitivity_scan_measures_a_real_model_and_restores_it():
    import tf_keras as keras

    from pruning_worker import sensitivity

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden))
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).random((64, 6)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, 64)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    losses = sensitivity.scan(model, ["hidden", "logits"], x, y, loss)
    assert set(losses) == {"hidden", "logits"} and all(len(v) == len(sensitivity.GRID) for v in losses.values())
    assert losses["hidden"][0] == pytest.approx(losses["logits"][0])  # sparsity 0: the model as it is
    assert losses["hidden"][-1] != losses["hidden"][0]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_sensitivity_scan_needs_a_plain_schedule():
    spec = job_spec("m" * 64, schedule=polynomial_decay(0.5, 0.8), block_size=(1, 4))
    spec.pruning.sensitivity_scan = True
    assert "spec.pruning.sensitivity_scan" in dict(validation.validate(spec))
    ok = job_spec("m" * 64, schedule=polynomial_decay(0.5, 0.8))
    ok.pruning.sensitivity_scan = True
    assert validation.validate(ok) == []
    full = validation.with_defaults(ok)
    recipe.resolve(full, 422, {"conv2d": 120, "dense": 20290})
    assert not full.pruning.layer_sparsity  # left to the worker's scan


def test_a_model_pruning_cannot_wrap_names_the_cause_and_mixed_precision():
    import tf_keras as keras

    model = keras.Sequential(
        [
            keras.layers.InputLayer(input_shape=(8,)),
            keras.layers.Dense(16, dtype="mixed_float16", name="half"),
            keras.layers.Dense(3, dtype="float32", name="out"),
        ]
    )
    spec = validation.with_defaults(job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8)))
    schedule = worker_recipe.make_schedule(spec.pruning, 100)
    with pytest.raises(JobInputError) as error:
        worker_recipe.apply_pruning(model, spec.pruning, schedule)
    message = str(error.value)
    assert "layers half compute in mixed precision" in message and "MatMul" in message
    assert "Call arguments" not in message and "\n" not in message


def test_pruning_keeps_the_padding_mask_of_a_text_model():
    """Embedding(mask_zero) -> LSTM (sequences) -> Dense -> GRU: wrapped for pruning, the model
    computes what it did before on padded data, trains, and the stripped model computes what
    the trained wrapped one did (TFMOT's wrapper dropped the mask, or failed on the Dense)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    rng = np.random.default_rng(0)
    x = rng.integers(1, 50, (32, 10)).astype("int32")
    x[:, 6:] = 0  # padding
    inputs = keras.Input((10,), dtype="int32")
    h = keras.layers.Embedding(50, 8, mask_zero=True, name="emb")(inputs)
    h = keras.layers.LSTM(6, return_sequences=True, name="lstm")(h)
    h = keras.layers.Dense(5, name="per_step")(h)
    h = keras.layers.GRU(6, name="gru")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    # Called eagerly throughout (no predict, run_eagerly fit): tracing the LSTM and GRU into
    # graphs took 30 s here. Traced training of a masked model, as the worker runs it, is
    # test_keras3.py's masked_sequence job.
    before = model(x).numpy()
    spec = pb.PruningSpec(schedule=constant_sparsity(0.5, frequency=1), block_size=[1, 1])
    schedule = worker_recipe.make_schedule(spec, 4)
    pruned, chosen = worker_recipe.apply_pruning(model, spec, schedule)
    assert set(chosen) == {"emb", "lstm", "per_step", "gru", "out"}
    assert np.abs(pruned(x).numpy() - before).max() < 1e-6  # the mask still flows
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    pruned.fit(
        x,
        rng.integers(0, 2, 32),
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    assert np.abs(stripped(x).numpy() - pruned(x).numpy()).max() < 1e-6
    assert (stripped.get_layer("emb").get_weights()[0] == 0).mean() == pytest.approx(0.5, abs=0.01)


def test_a_mask_ends_at_a_wrapped_layer_that_does_not_support_masking():
    """Embedding(mask_zero) -> Conv1D -> pooling: the convolution ends the mask, wrapped or not."""
    import tf_keras as keras

    x = np.random.default_rng(0).integers(1, 50, (8, 10)).astype("int32")
    x[:, 7:] = 0
    inputs = keras.Input((10,), dtype="int32")
    h = keras.layers.Embedding(50, 8, mask_zero=True, name="emb")(inputs)
    h = keras.layers.Conv1D(4, 3, name="conv")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.GlobalMaxPooling1D()(h)))
    spec = pb.PruningSpec(schedule=constant_sparsity(0.5, frequency=1), block_size=[1, 1])
    pruned, _ = worker_recipe.apply_pruning(model, spec, worker_recipe.make_schedule(spec, 4))
    assert np.abs(pruned.predict(x, verbose=0) - model.predict(x, verbose=0)).max() < 1e-6


def test_distillation_is_the_default_only_where_every_loss_given_is_a_sparse_cross_entropy():
    def distills(**training):
        return _resolved(422, **training).training.distillation

    assert distills()
    assert distills(output_losses={"out": "sparse_categorical_crossentropy"})
    assert not distills(output_losses={"box": "mean_squared_error"})
    assert not distills(loss="mean_squared_error")


@pytest.mark.parametrize("m, n", [(1, 4), (2, 4), (3, 4), (3, 5)])
def test_m_by_n_sparsity_is_m_zeros_of_every_n_and_the_job_s_targets_match_tfmot(m, n):
    """TFMOT zeroes m of every n input-channel weights: the job's target was 1 - m/n, so every
    pattern but 2:4 trained in full and then failed its sparsity check. Layers whose input
    channels are not a multiple of n end in a shorter group, which the per-layer targets count."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from pruning_worker import measure

    rng = np.random.default_rng(0)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(8, 3, name="conv_in3")(inputs)  # 3 input channels
    h = keras.layers.Conv2D(10, 3, name="conv")(h)  # 8
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(10, name="hidden")(h)  # 40
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(h))  # 10: not a multiple of 4
    spec = pb.PruningSpec(
        schedule=constant_sparsity(0.5, frequency=1), sparsity_m_by_n=pb.SparsityMByN(m=m, n=n), block_size=[1, 1]
    )
    assert (
        validation.validate(pb.JobSpec(pruning=spec, model_id="a" * 64, dataset=pb.DatasetRef(builtin="mnist"))) == []
    )
    pruned, chosen = worker_recipe.apply_pruning(model, spec, worker_recipe.make_schedule(spec, 4))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    x, y = rng.normal(size=(16, 6, 6, 3)).astype("float32"), rng.integers(0, 3, 16)
    pruned.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    result = pb.PruneResult()
    measure.fill_sparsity(result, stripped, set(chosen), worker_recipe.layer_targets(spec, chosen, stripped))
    layers = {x.name: x for x in result.layers}
    assert layers["hidden"].target_sparsity == pytest.approx(m / n)  # 40 input channels: whole groups
    for layer in layers.values():
        assert layer.sparsity == pytest.approx(layer.target_sparsity, abs=1e-9), layer.name
    worker_recipe.check_target(result, spec)  # raised "0.2500 sparse, the target is 0.7500" for 1:4
    assert validation.target_sparsity(spec) == pytest.approx(m / n)
    notes = worker_recipe.check_shapes(model, spec, chosen)
    assert any("conv_in3" in note for note in notes) == (3 <= n - m)


def test_patterns_a_kernel_cannot_take_are_refused_before_fine_tuning():
    import tf_keras as keras

    inputs = keras.Input((10, 4))
    h = keras.layers.Conv1D(4, 3, name="conv1d")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Flatten()(h)))
    spec = pb.PruningSpec(
        schedule=constant_sparsity(0.5, frequency=1), sparsity_m_by_n=pb.SparsityMByN(m=2, n=4), block_size=[1, 1]
    )
    with pytest.raises(
        JobInputError, match=r"sparsity_m_by_n: takes 2-D .* exclude the layers \['conv1d \(Conv1D\)'\]"
    ):
        worker_recipe.apply_pruning(model, spec, worker_recipe.make_schedule(spec, 4))
    spec = pb.PruningSpec(schedule=constant_sparsity(0.5, frequency=1), block_size=[64, 1])
    spec.layers.exclude_types.append("Conv1D")
    with pytest.raises(JobInputError, match=r"block_size: \[64, 1\] is not smaller than the kernel of layer out"):
        worker_recipe.apply_pruning(model, spec, worker_recipe.make_schedule(spec, 4))
    # equal to a side fails in TFMOT too (a pooled side of 1): the out kernel is (32, 2)
    spec.block_size[:] = [2, 2]
    with pytest.raises(JobInputError, match=r"block_size: \[2, 2\] is not smaller"):
        worker_recipe.apply_pruning(model, spec, worker_recipe.make_schedule(spec, 4))
    spec.block_size[:] = [4, 1]
    worker_recipe.apply_pruning(model, spec, worker_recipe.make_schedule(spec, 4))


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda p: p.sparsity_m_by_n.MergeFrom(pb.SparsityMByN(m=1, n=1_000_000_000)), "spec.pruning.sparsity_m_by_n"),
        (lambda p: p.block_size.extend([1_000_000_000, 1_000_000_000]), "spec.pruning.block_size"),
    ],
)
def test_patterns_past_any_kernel_are_refused_at_createjob(change, field):
    spec = job_spec("a" * 64, schedule=constant_sparsity(0.5))
    change(spec.pruning)
    assert field in [f for f, _ in validation.validate(spec)]


def test_an_accuracy_fallen_to_chance_is_warned_of():
    """A 0.999-sparse MNIST job SUCCEEDED at 0.1135 test accuracy with nothing said."""
    from pruning_worker.recipe import chance_level_note

    labels = np.array([0] * 12 + [1] * 4 + [2] * 4)  # chance: 0.6, the most frequent label's share
    note = chance_level_note(0.61, 0.95, labels)
    assert note is not None and note.startswith("the pruned model's test accuracy 0.6100 is at chance level (0.6000")
    assert chance_level_note(0.61, 0.95, np.eye(3)[labels]) == note  # one-hot labels alike
    assert chance_level_note(0.61, 0.95, labels[:, None]) == note
    assert chance_level_note(0.70, 0.95, labels) is None  # above chance
    assert chance_level_note(0.60, 0.65, labels) is None  # the baseline was no better
    assert chance_level_note(0.5, 0.9, {"out": labels}) is None
    assert chance_level_note(0.5, 0.9, [labels, np.zeros((20, 3))]) is None  # several outputs, as the job has them
    assert chance_level_note(0.5, 0.9, np.zeros((4, 3, 2))) is None  # sequences: not one class per sample
