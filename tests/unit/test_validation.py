import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import constant_sparsity, job_spec, polynomial_decay
from pruning_core import recipe, validation

MODEL = "a" * 64
SCHEDULES = {
    "polynomial": lambda **kw: polynomial_decay(0.5, 0.8, **kw),
    "constant": lambda **kw: constant_sparsity(0.5, **kw),
}


@pytest.fixture(params=sorted(SCHEDULES))
def schedule(request):
    return SCHEDULES[request.param]


def fields(spec):
    return [f for f, _ in validation.validate(spec)]


def test_valid_spec_has_no_violations(schedule):
    assert validation.validate(job_spec(MODEL, schedule=schedule())) == []


def test_defaults_are_filled(schedule):
    spec = job_spec(MODEL, schedule=schedule(frequency=0), epochs=0, batch_size=0, optimizer="", exports=())
    full = validation.with_defaults(spec)
    assert full.training.epochs == 2 and full.training.batch_size == 128 and full.training.optimizer == "adam"
    assert full.training.loss == "sparse_categorical_crossentropy_from_logits"
    assert list(full.pruning.block_size) == [1, 1]
    assert list(full.export.formats) == [pb.EXPORT_FORMAT_KERAS]
    which = full.pruning.schedule.WhichOneof("schedule")
    assert getattr(full.pruning.schedule, which).frequency == 0  # the recipe's, once the steps are known
    recipe.resolve(full, 100)
    assert getattr(full.pruning.schedule, which).frequency >= 1
    assert validation.validate(full) == []


@pytest.mark.parametrize(
    "begin, end, ok", [(0, 0, True), (0, 10, True), (10, 10, False), (100, 50, False), (-1, 0, False)]
)
def test_step_range(schedule, begin, end, ok):
    assert (fields(job_spec(MODEL, schedule=schedule(begin_step=begin, end_step=end))) == []) is ok


@pytest.mark.parametrize("value", [-0.01, 1.0, 1.5])
def test_sparsity_range(value):
    assert "spec.pruning.schedule.constant_sparsity.target_sparsity" in fields(
        job_spec(MODEL, schedule=constant_sparsity(value))
    )
    assert "spec.pruning.schedule.polynomial_decay.final_sparsity" in fields(
        job_spec(MODEL, schedule=polynomial_decay(0.0, value))
    )


@pytest.mark.parametrize(
    ("power", "ok"), [(0.0, True), (2.5, True), (-1.0, False), (float("nan"), False), (float("inf"), False)]
)
def test_power_is_a_finite_number_at_least_0(power, ok):
    assert (fields(job_spec(MODEL, schedule=polynomial_decay(0.5, 0.8, power=power))) == []) is ok
    if not ok:
        assert fields(job_spec(MODEL, schedule=polynomial_decay(0.5, 0.8, power=power))) == [
            "spec.pruning.schedule.polynomial_decay.power"
        ]


def test_final_below_initial():
    assert fields(job_spec(MODEL, schedule=polynomial_decay(0.8, 0.5))) == [
        "spec.pruning.schedule.polynomial_decay.final_sparsity"
    ]


def test_every_problem_is_reported_at_once():
    spec = job_spec("", schedule=polynomial_decay(2.0, 3.0), epochs=-1, validation_split=1.0, optimizer="magic")
    spec.dataset.builtin = "cifar"
    assert set(fields(spec)) >= {
        "spec.model_id",
        "spec.dataset.builtin",
        "spec.pruning.schedule.polynomial_decay.initial_sparsity",
        "spec.training.epochs",
        "spec.training.validation_split",
        "spec.training.optimizer",
    }


def test_missing_schedule_and_dataset():
    spec = pb.JobSpec(model_id=MODEL)
    assert {"spec.dataset", "spec.pruning.schedule"} <= set(fields(spec))


@pytest.mark.parametrize("m, n, ok", [(2, 4, True), (4, 4, False), (0, 4, False)])
def test_m_by_n(m, n, ok):
    spec = job_spec(MODEL)
    spec.pruning.sparsity_m_by_n.m, spec.pruning.sparsity_m_by_n.n = m, n
    assert (fields(spec) == []) is ok


def test_block_size_and_layers():
    spec = job_spec(MODEL, block_size=(1, 0), include_layers=("a",), exclude_layers=("a",))
    assert set(fields(spec)) == {"spec.pruning.block_size", "spec.pruning.layers"}


def test_unknown_export_format_and_keras_version_are_refused():
    from pruning.v1 import pruning_pb2 as pb

    spec = pb.JobSpec(
        model_id="ab" * 32,
        dataset=pb.DatasetRef(builtin="mnist"),
        pruning=pb.PruningSpec(schedule=pb.PruningSchedule(constant_sparsity=pb.ConstantSparsity(target_sparsity=0.5))),
        export=pb.ExportSpec(formats=[42], keras_version=7),
    )
    fields = {field for field, _ in validation.validate(spec)}
    assert {"spec.export.formats", "spec.export.keras_version"} <= fields
    spec.export.ClearField("formats")
    spec.export.keras_version = pb.KERAS_VERSION_3
    assert validation.validate(spec) == []


def _structured_spec(**kwargs):
    from pruning_client import structured

    return job_spec(MODEL, schedule=None, structured=structured(**kwargs))


def test_structured_only_needs_no_schedule_and_keeps_none():
    spec = _structured_spec(ratio=0.5)
    assert not spec.pruning.HasField("schedule")
    assert validation.validate(spec) == []
    full = validation.with_defaults(spec)
    assert not full.pruning.HasField("schedule")
    s = full.pruning.structured
    assert (s.min_channels, s.round_to, s.taylor_batches, s.latency_repeats) == (1, 1, 4, 10)
    assert s.importance == pb.IMPORTANCE_CRITERION_L1
    assert validation.validate(full) == []


def test_structured_ranges_are_checked_all_at_once():
    spec = _structured_spec(ratio=1.0, layer_ratios={"conv": -0.1}, min_channels=-1, round_to=-8, taylor_batches=-1)
    assert sorted(fields(spec)) == [
        "spec.pruning.structured.layer_ratios[conv]",
        "spec.pruning.structured.min_channels",
        "spec.pruning.structured.ratio",
        "spec.pruning.structured.round_to",
        "spec.pruning.structured.taylor_batches",
    ]
    huge = _structured_spec(ratio=0.5, min_channels=2**31 - 1, round_to=2**31 - 1)
    assert sorted(fields(huge)) == ["spec.pruning.structured.min_channels", "spec.pruning.structured.round_to"]


def test_structured_layer_ratios_name_layers_that_make_channels():
    layers = [("Conv2D", "stem"), ("BatchNormalization", "bn"), ("DepthwiseConv2D", "dw"), ("Dense", "logits")]
    spec = _structured_spec(ratio=0.5, layer_ratios={"stem": 0.5, "bn": 0.5, "dw": 0.25})
    found = validation.validate_against_model(spec, layers, ["logits"])
    assert [f for f, _ in found] == [
        "spec.pruning.structured.layer_ratios[bn]",
        "spec.pruning.structured.layer_ratios[dw]",
    ]
    assert "is a BatchNormalization, not a layer with channels of its own" in found[0][1]


def test_structured_refuses_output_layers_and_unknown_names():
    layers = [("Conv2D", "conv"), ("Dense", "hidden"), ("Dense", "logits")]
    spec = _structured_spec(ratio=0.5, layer_ratios={"logits": 0.5, "nope": 0.2, "hidden": 0.3})
    found = [f for f, _ in validation.validate_against_model(spec, layers, ["logits"])]
    assert found == ["spec.pruning.structured.layer_ratios[logits]", "spec.pruning.structured.layer_ratios[nope]"]
    keep_output = _structured_spec(ratio=0.5, layer_ratios={"logits": 0.0})
    assert validation.validate_against_model(keep_output, layers, ["logits"]) == []
    spec = _structured_spec(ratio=0.5)
    spec.pruning.layers.include_names[:] = ["hidden", "logits"]
    found = [f for f, _ in validation.validate_against_model(spec, layers, ["logits"])]
    assert found == ["spec.pruning.layers.include_names"]


def test_the_channel_makers_createjob_names_are_the_worker_s_producers():
    """core.validation lists by name (no TensorFlow on the server) what the worker's channel
    graph takes as a layer with channels of its own: the two lists must not drift apart."""
    from pruning_worker.structured import graph

    producers = {c.__name__ for c in graph.PRODUCERS + graph.TRANSPOSED}
    assert validation.CHANNEL_MAKERS == producers
    assert not validation.CHANNEL_MAKERS & {c.__name__ for c in graph.NOT_PRODUCERS}


def test_an_unknown_loss_is_answered_with_every_loss_within_the_error_cut():
    spec = job_spec("a" * 64, loss="msq")
    spec.training.output_losses["box"] = "x" * 500
    found = dict(validation.validate(spec))
    said = f"spec.training.loss: {found['spec.training.loss']}"
    assert len(said.encode()) <= 200, said  # the server's default cut (200 bytes) keeps it whole
    assert said.startswith("spec.training.loss: 'msq': not one of ") and said.endswith("mean_absolute_error")
    assert "binary_crossentropy[_from_logits]" in said
    long = found["spec.training.output_losses[box]"]
    assert len(long.encode()) <= 200 and long.endswith("mean_absolute_error")  # the echo cut, not the list
    # a name cut short says so (a loss name cut short could read as a valid one)
    cut = dict(validation.validate(job_spec("a" * 64, loss="focal_loss_with_gamma_2")))["spec.training.loss"]
    assert cut.startswith("'focal_loss_with_gam\u2026': not one of ") and len(cut.encode()) <= 200
    # a name close to one is shown whole, with the one meant: cut at 20, the typo was hidden
    for typo, meant in [
        ("sparse_categorical_crossentropy_from_logit", "sparse_categorical_crossentropy_from_logits"),
        ("categorical_crossentropy_logits", "categorical_crossentropy_from_logits"),
        ("Mean_Squared_Error", "mean_squared_error"),
        ("binary_crossentropy_with_logits", "binary_crossentropy_from_logits"),
    ]:
        said = dict(validation.validate(job_spec("a" * 64, loss=typo)))["spec.training.loss"]
        assert said == f"{typo!r}: not a loss; did you mean {meant!r}?"


@pytest.mark.parametrize(
    "value, ok", [(0, True), (30, True), (0.5, True), (-1, False), (float("nan"), False), (float("inf"), False)]
)
def test_a_job_time_limit_is_finite_seconds_at_least_0(value, ok):
    spec = job_spec(MODEL, time_limit_s=value)
    assert ("spec.time_limit_s" not in fields(spec)) == ok


@pytest.mark.parametrize(
    "own, service, expected",
    [
        (0, 0, (0.0, "")),
        (30, 0, (30, "the job's time_limit_s")),
        (0, 60, (60, "this service's PRUNING_JOB_TIME_LIMIT_S")),
        (30, 60, (30, "the job's time_limit_s")),
        (90, 60, (60, "this service's PRUNING_JOB_TIME_LIMIT_S")),
    ],
)
def test_the_lower_of_the_job_s_and_the_service_s_time_limits_applies(own, service, expected):
    assert validation.time_limit(job_spec(MODEL, time_limit_s=own), service) == expected


def test_labels_and_idempotency_keys_with_control_characters_are_refused():
    assert validation.validate_metadata({"team": "vision", "note": "déjà vu ✓"}, "key-1") == []
    ((field, text),) = validation.validate_metadata({"a\0b": "c"}, "")
    assert field == "labels[a\\x00b]" and "control characters" in text
    assert [f for f, _ in validation.validate_metadata({"a": "b\tc"}, "k\n")] == ["labels[a]", "idempotency_key"]
    # what reorders or breaks a listing's lines: a bidi override, a line separator
    assert [f for f, _ in validation.validate_metadata({"x": "evil\u202etxt", "y": "a\u2028b"}, "")] == [
        "labels[x]",
        "labels[y]",
    ]


def test_a_file_given_as_the_dataset_is_told_to_upload_it_first():
    """job_spec(dataset="data.npz") answered "must be one of ['mnist']" with no word of uploading."""
    said = dict(validation.validate(job_spec("a" * 64, dataset="runs/data.npz")))["spec.dataset.builtin"]
    assert said.endswith("a file is uploaded first (upload_dataset, or `pruning upload`) and given by its artifact id")
    said = dict(validation.validate(job_spec("a" * 64, dataset="cifar10")))["spec.dataset.builtin"]
    assert said == "must be one of ['mnist'], got 'cifar10'"


@pytest.mark.parametrize("field", ["include_names", "exclude_names", "include_types", "exclude_types"])
def test_a_layer_selection_list_past_its_bound_is_refused_naming_it(field):
    """Each name of a selection is looked for in every layer of the model, and each class name
    matched against every Keras class: 50,000 include_types (a 0.5 MB CreateJob) held the
    server's loop, every tenant's calls, for 16 s; 500,000 for 3.5 minutes."""
    spec = job_spec(MODEL, schedule=constant_sparsity(0.5))
    getattr(spec.pruning.layers, field).extend(f"Dens{i}" for i in range(1000))
    assert validation.validate(spec) == []
    getattr(spec.pruning.layers, field).append("Dense")
    said = dict(validation.validate(spec))
    assert said == {f"spec.pruning.layers.{field}": "at most 1000 names, got 1001"}


def test_export_formats_past_one_of_each_are_refused_at_once():
    """Seven million formats (a 7 MB CreateJob) held the server's loop for 28 s."""
    import time

    spec = job_spec(MODEL, schedule=constant_sparsity(0.5))
    spec.export.formats.extend([pb.EXPORT_FORMAT_KERAS] * 2_000_000)
    started = time.monotonic()
    said = dict(validation.validate(spec))
    assert time.monotonic() - started < 1
    assert said["spec.export.formats"] == "at most 5 formats (each once), got 2000000"
    every = job_spec(MODEL, schedule=constant_sparsity(0.5))
    every.export.formats.extend(f for f in pb.ExportFormat.values() if f)
    assert validation.validate(every) == []


def test_structured_layer_ratios_past_the_bound_are_refused():
    spec = job_spec(MODEL, schedule=constant_sparsity(0.5))
    spec.pruning.structured.ratio = 0.5
    spec.pruning.structured.layer_ratios.update({f"l{i}": 0.1 for i in range(1001)})
    said = dict(validation.validate(spec))
    assert said["spec.pruning.structured.layer_ratios"] == "at most 1000 layers, got 1001"


def test_labels_past_the_bound_are_refused_without_reading_each():
    """400,000 labels took the server's loop 3.6 s to check one by one, past the count that
    refuses them anyway."""
    import time

    labels = {f"k{i}\n": "v" for i in range(200_000)}  # each one bad too
    started = time.monotonic()
    said = validation.validate_metadata(labels, "")
    assert time.monotonic() - started < 0.5
    assert said == [("labels", f"at most {validation.MAX_LABELS} labels, got 200000")]


def _largest_valid_requests(name_length: int) -> tuple[pb.CreateJobRequest, pb.CreateSweepRequest]:
    """Every bounded list and map of a spec at its bound, names of ``name_length`` characters,
    every label and the idempotency key at their longest."""
    from pruning_core import sweeps

    job = pb.CreateJobRequest(idempotency_key="k" * validation.MAX_IDEMPOTENCY_KEY)
    spec = job.spec
    names = [f"{i:0{name_length}d}" for i in range(validation.MAX_SELECTED)]
    for field in validation.SELECTION_FIELDS:
        getattr(spec.pruning.layers, field).extend(names)
    for name in names[: validation.MAX_LAYER_SPARSITIES]:
        spec.pruning.layer_sparsity[name] = 0.5
        spec.pruning.structured.layer_ratios[name] = 0.5
    for name in names[: validation.MAX_OUTPUT_LOSSES]:
        spec.training.output_losses[name] = "sparse_categorical_crossentropy"
    spec.export.formats.extend(range(1, len(pb.ExportFormat.values())))
    for i in range(validation.MAX_LABELS):
        job.labels[f"{i:0{validation.MAX_LABEL_LENGTH}d}"] = "v" * validation.MAX_LABEL_LENGTH
    sweep = pb.CreateSweepRequest(labels=job.labels, idempotency_key=job.idempotency_key)
    sweep.spec.base.CopyFrom(spec)
    sweep.spec.sparsities.extend(i / (sweeps.LIMIT_SPARSITIES + 1) for i in range(sweeps.LIMIT_SPARSITIES))
    return job, sweep


def test_the_largest_valid_create_requests_fit_the_server_s_request_bound():
    """The server refuses a request message past MAX_REQUEST_BYTES unparsed: every valid
    CreateJob and CreateSweep must fit it, so a layer name's length is bounded too."""
    from pruning_server.interceptors import MAX_REQUEST_BYTES

    job, sweep = _largest_valid_requests(validation.MAX_LAYER_NAME)
    assert job.ByteSize() < MAX_REQUEST_BYTES and sweep.ByteSize() < MAX_REQUEST_BYTES

    too_long, _ = _largest_valid_requests(validation.MAX_LAYER_NAME + 1)
    fields = {field for field, _ in validation.validate(too_long.spec)}
    assert {
        "spec.pruning.layer_sparsity",
        "spec.pruning.structured.layer_ratios",
        "spec.training.output_losses",
        *(f"spec.pruning.layers.{field}" for field in validation.SELECTION_FIELDS),
    } <= fields
