"""Latency figures: each timed run of a fast call lasts long enough to time, and a
difference inside the machine's noise says so (a tiny TFLite model showed 1.47x and 4.96x
"speed-ups" of weight pruning, which changes nothing a dense kernel computes)."""

from __future__ import annotations

import time

import numpy as np

from pruning.v1 import pruning_pb2 as pb
from pruning_client.results import speed_up
from pruning_worker import measure


def _busy(seconds: float):
    def run() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return run


def test_fast_calls_are_timed_in_runs_long_enough_to_time():
    calls = [0, 0]

    def a() -> None:
        calls[0] += 1

    def b() -> None:
        calls[1] += 1

    timed = measure.paired_median_ms(a, b, repeats=10)
    assert timed.calls_per_sample >= 100  # a call of well under a microsecond
    assert calls[0] == calls[1] >= 10 * timed.calls_per_sample
    assert 0 < timed.a_ms < 0.01 and 0 < timed.b_ms < 0.01


def test_medians_within_two_percent_are_noise_however_tight_the_samples(monkeypatch):
    """Identical busy-waits came apart by 0.05% (quartiles a microsecond wide, disjoint) on a
    loaded CI machine: that is no speed-up to count on."""
    clock = iter(x / 1e6 for x in range(10**6))  # a clock whose every reading is 1 us on

    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    calls = {"a": 0, "b": 0}

    def run(name: str, extra: int):
        def go() -> None:
            calls[name] += 1
            for _ in range(extra):
                next(clock)

        return go

    close = measure.paired_median_ms(run("a", 1000), run("b", 1005), repeats=9)  # 0.5% apart, no spread
    assert close.within_noise, close
    apart = measure.paired_median_ms(run("a", 1000), run("b", 1100), repeats=9)  # 10% apart
    assert not apart.within_noise, apart


def test_the_same_work_is_within_noise_and_twice_the_work_is_not():
    same = measure.paired_median_ms(_busy(0.0005), _busy(0.0005), repeats=15)
    assert same.within_noise, same
    slower = measure.paired_median_ms(_busy(0.002), _busy(0.0005), repeats=15)
    assert not slower.within_noise, slower
    assert slower.a_ms / slower.b_ms > 1.8, slower  # 4x of work; a loaded machine preempts both
    few = measure.paired_median_ms(_busy(0.002), _busy(0.0005), repeats=3)
    assert few.within_noise  # three runs cannot tell a spread


def test_a_run_slow_while_it_comes_up_is_warmed_before_it_is_timed():
    """The first interpreter called after both were built ran slower for the whole measurement
    (TFLite at batch 1: 0.038 against 0.011 ms for the same model, reported a 3.48x speed-up).
    Both runs are called in alternation for WARMUP_S before the timed samples."""
    created = time.perf_counter()

    def cold_then_warm() -> None:  # three times as slow for its first 0.1 s
        _busy(0.0003 if time.perf_counter() - created < 0.1 else 0.0001)()

    timed = measure.paired_median_ms(cold_then_warm, _busy(0.0001), repeats=10)
    assert timed.within_noise or 0.8 < timed.a_ms / timed.b_ms < 1.25, timed
    assert measure.WARMUP_S >= 0.1


def test_a_speed_up_within_noise_is_shown_as_such():
    assert speed_up(pb.Latency(before_ms=0.3, after_ms=0.2)) == "1.50x"
    assert speed_up(pb.Latency(before_ms=0.3, after_ms=0.2, within_noise=True)) == "1.50x, within noise"
    assert speed_up(pb.Latency(before_ms=0.3)) == ""


def _open_models():
    """Models whose inputs leave a dimension open, with data of a fixed shape: an image CNN
    of any size, a text model of any length, and both as one two-input model."""
    import tf_keras as keras

    layers = keras.layers
    image = keras.Input((None, None, 1), name="image")
    h = layers.Conv2D(16, 3, activation="relu")(layers.Conv2D(8, 3, activation="relu")(image))
    image_features = layers.GlobalMaxPooling2D()(h)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    h = layers.Conv1D(16, 3, padding="same", activation="relu")(layers.Embedding(50, 8)(tokens))
    text_features = layers.GlobalAveragePooling1D()(h)
    rng = np.random.default_rng(0)
    images, texts = rng.random((8, 12, 12, 1), np.float32), rng.integers(0, 50, (8, 20)).astype("int32")
    both = layers.Concatenate()([image_features, text_features])
    return [
        ("image", keras.Model(image, layers.Dense(4)(image_features)), images, {"image": [64, 12, 12, 1]}),
        ("text", keras.Model(tokens, layers.Dense(4)(text_features)), texts, {"tokens": [64, 20]}),
        (
            "both",
            keras.Model({"image": image, "tokens": tokens}, layers.Dense(4)(both)),
            {"image": images, "tokens": texts},
            {"image": [64, 12, 12, 1], "tokens": [64, 20]},
        ),
    ]


def test_open_input_dimensions_are_measured_at_the_shape_of_the_jobs_samples():
    from pruning_worker.structured.step import BATCHES

    for name, model, x, shapes in _open_models():
        assert measure.input_shapes(model, 64, x) == shapes, name
        flat = measure.tflite_bytes(model)
        run = measure.tflite_runner(flat, 64, shapes)
        run()
        interpreter = run.__self__  # the TFLite interpreter invoked, resized to the data's shape
        assert sorted(list(d["shape"]) for d in interpreter.get_input_details()) == sorted(shapes.values()), name
        assert measure.flops(model, x) > 10_000, name  # the convolutions too, at the data's size (~132 without)
        warnings: list[str] = []
        figures = measure.latency_figures(model, model, "CPU", BATCHES, 3, warnings.append, x)
        assert not warnings, (name, warnings)
        assert sorted((f.runtime, f.batch_size) for f in figures) == sorted(
            (runtime, b) for runtime in ("tf", "tflite") for b in BATCHES
        )
        assert all(f.before_ms > 0 and f.after_ms > 0 for f in figures)


def test_a_model_that_cannot_be_measured_gets_a_warning_and_no_figures_not_a_failed_job():
    _, model, _, _ = _open_models()[0]
    warnings: list[str] = []
    figures = measure.latency_figures(model, model, "CPU", (1, 64), 3, warnings.append)  # no data for the open dims
    assert not figures
    assert len(warnings) == 1 and warnings[0].startswith("no latency figures") and "'image'" in warnings[0]


def test_flops_count_grouped_and_depthwise_convolutions_and_what_follows_them(monkeypatch):
    import tensorflow as tf

    keras = tf.keras

    def model(groups: int, depthwise: bool = False):
        inputs = keras.Input((16, 16, 8))
        x = keras.layers.Conv2D(16, 3, padding="same", groups=groups, use_bias=False)(inputs)
        if depthwise:
            x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
        x = keras.layers.Conv2D(8, 1, use_bias=False)(x)
        x = keras.layers.Flatten()(x)
        return keras.Model(inputs, keras.layers.Dense(4, use_bias=False)(x))

    pointwise, dense = 2 * 16 * 16 * 16 * 8, 2 * 16 * 16 * 8 * 4
    for groups in (1, 2, 4):
        grouped = 2 * 16 * 16 * 16 * 3 * 3 * 8 // groups
        assert measure.flops(model(groups)) == grouped + pointwise + dense, groups
    depthwise = 2 * 16 * 16 * 16 * 3 * 3
    assert measure.flops(model(2, depthwise=True)) == 2 * 16 * 16 * 16 * 3 * 3 * 4 + depthwise + pointwise + dense
    # only the counted model's layers change, and only while it is traced: the class keeps its
    # nested function throughout, and the layer runs as before once counted
    from tf_keras.src.layers.convolutional.base_conv import Conv

    nested = Conv.__dict__["_jit_compiled_convolution_op"]
    class_kept_while_traced = []
    trace = measure._call

    def spy(m):
        class_kept_while_traced.append(Conv.__dict__["_jit_compiled_convolution_op"] is nested)
        return trace(m)

    monkeypatch.setattr(measure, "_call", spy)
    grouped_model = model(2)
    assert measure.flops(grouped_model) > 0
    assert class_kept_while_traced == [True] and Conv.__dict__["_jit_compiled_convolution_op"] is nested
    assert all("_jit_compiled_convolution_op" not in vars(layer) for layer in grouped_model.layers)
    assert grouped_model(np.ones((1, 16, 16, 8), "float32")).shape == (1, 4)


def test_the_time_limit_and_a_cancel_stop_the_latency_measurement_between_samples(tmp_path):
    """The report's latency is one part of the job, and its samples were all taken before the
    time limit was looked at again: 40 repeats at a batch of 65,536 ran a job with a limit of
    20 s for 187 s, and 1,000 repeats would have held the worker for an hour. The limit (and a
    cancel) is checked before each pair of samples, and stops the job rather than the figures."""
    import pytest
    import tf_keras as keras

    from pruning_worker import pipeline
    from pruning_worker.errors import JobDeadlineExceeded

    checks: list[int] = []

    def check() -> None:
        checks.append(1)
        if len(checks) > 3:
            raise JobDeadlineExceeded("the job ran past its time limit of 20 s (the job's time_limit_s)")

    with pytest.raises(JobDeadlineExceeded):
        measure.paired_median_ms(_busy(0.0001), _busy(0.0001), 1000, check=check)
    assert len(checks) == 4

    class Reporter:
        def __init__(self) -> None:
            self.calls, self.lines = 0, []

        def log(self, message: str, level: str = "INFO") -> None:
            self.lines.append((level, message))

        def check_between_steps(self) -> None:
            self.calls += 1
            if self.calls > 3:
                raise JobDeadlineExceeded("the job ran past its time limit of 20 s (the job's time_limit_s)")

        def phase(self, phase: str, message: str) -> None:  # as the runner's: checks, then starts it
            self.check_between_steps()
            self.log(message)

    model = keras.Sequential([keras.layers.InputLayer(input_shape=(4,)), keras.layers.Dense(2)])
    spec = pb.JobSpec()
    spec.training.batch_size = 8
    spec.report.latency_repeats = 1000
    reporter = Reporter()
    started = time.monotonic()
    with pytest.raises(JobDeadlineExceeded):
        pipeline._report(spec, pb.PruneResult(device="CPU"), model, model, tmp_path, tmp_path / "logs", reporter)
    assert time.monotonic() - started < 60
    assert not [m for level, m in reporter.lines if level == "WARNING"]  # stopped, not a report warning


def test_the_time_limit_stops_a_structured_jobs_latency_measurement_too():
    import pytest
    import tf_keras as keras

    from pruning_worker.errors import JobDeadlineExceeded
    from pruning_worker.structured import step

    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        if len(calls) > 2:
            raise JobDeadlineExceeded("the job ran past its time limit of 20 s (the job's time_limit_s)")

    warnings: list[str] = []
    model = keras.Sequential([keras.layers.InputLayer(input_shape=(4,)), keras.layers.Dense(2)])
    with pytest.raises(JobDeadlineExceeded):
        measure.latency_figures(model, model, "CPU", step.BATCHES, 1000, warnings.append, None, check)
    assert len(calls) == 3 and not warnings  # stopped, not a report warning


def test_the_warm_up_asks_for_the_time_limit_a_few_times_not_before_every_call():
    """``check`` is the runner's check_between_steps: a round trip to the job store (is a
    cancel asked?). The warm-up called it before each pair of calls once past ``warmup``, so a
    model of microseconds a call asked Redis thousands of times in its 0.2 s, and the warm-up
    timed the round trips rather than warming the runs. It asks every WARMUP_CHECK_S instead,
    and once before the first call (a model of seconds a call was never asked during its
    ``warmup`` pairs)."""
    checks: list[float] = []
    measure.paired_median_ms(lambda: None, lambda: None, repeats=5, check=lambda: checks.append(time.perf_counter()))
    assert 5 < len(checks) <= 5 + measure.WARMUP_S / measure.WARMUP_CHECK_S + 2, len(checks)

    first: list[int] = []

    def slow() -> None:
        first.append(len(checks_slow))
        time.sleep(0.01)

    checks_slow: list[int] = []
    measure.paired_median_ms(slow, slow, repeats=1, warmup=2, check=lambda: checks_slow.append(1))
    assert first[0] == 1  # asked before the first call
