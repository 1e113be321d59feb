"""The worker's loader refuses unsafe models before any code in them could run."""

import pytest

from pruning_worker.errors import JobInputError
from pruning_worker.safe_load import load_model


def test_lambda_model_is_refused_unexecuted(tmp_path):
    import models

    marker = tmp_path / "ran"
    path = models.lambda_model(tmp_path / "lambda.h5", marker)
    with pytest.raises(JobInputError, match="Lambda"):
        load_model(path, tmp_path, 10**9)
    assert not marker.exists()


def test_a_model_of_several_refused_layers_says_how_many(tmp_path):
    import tf_keras as keras

    inputs = keras.Input((4,))
    h = keras.layers.Lambda(lambda x: x + 1, name="first")(inputs)
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2, name="second")(h)).save(tmp_path / "two.keras")
    with pytest.raises(JobInputError, match=r"'first' \(Lambda\).*\(and 1 more refused layers\)"):
        load_model(tmp_path / "two.keras", tmp_path, 10**9)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_good_model_loads_uncompiled(tmp_path, suffix):
    import models

    path = models.small_model(tmp_path / f"m{suffix}")
    blob = tmp_path / "blob"  # artifact store names have no suffix
    blob.write_bytes(path.read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    model = load_model(blob, work, 10**9)
    assert [layer.name for layer in model.layers][-2:] == ["hidden", "logits"]
    assert model.optimizer is None


def test_plain_keras_load_would_run_the_lambda(tmp_path):
    """The control for the test above: the marker does appear when Keras loads the file."""
    import tf_keras as keras

    import models

    marker = tmp_path / "ran"
    path = models.lambda_model(tmp_path / "lambda.h5", marker)
    keras.models.load_model(path, compile=False)
    assert marker.exists()


def test_worker_checks_the_layer_selection_itself(tmp_path):
    """Exports carry no layer list for the server to check: the worker refuses bad selections."""
    import models
    from pruning.v1 import pruning_pb2 as pb
    from pruning_worker import recipe

    model = load_model(models.small_model(tmp_path / "m.keras"), tmp_path, 10**9)
    spec = pb.PruningSpec(block_size=[1, 1], layers=pb.LayerSelection(include_names=["hidden", "nope"]))
    schedule = recipe.make_schedule(
        pb.PruningSpec(
            schedule=pb.PruningSchedule(constant_sparsity=pb.ConstantSparsity(target_sparsity=0.5, frequency=1))
        ),
        10,
    )
    with pytest.raises(JobInputError, match="include_names"):
        recipe.apply_pruning(model, spec, schedule)
    spec.layers.include_names[:] = ["hidden"]
    _, chosen = recipe.apply_pruning(model, spec, schedule)
    assert chosen == ["hidden"]


@pytest.mark.parametrize("version", [2, 3])
def test_a_model_with_a_nan_weight_is_the_client_s_mistake(tmp_path, version):
    """A NaN kernel failed a Keras 3 job as INTERNAL ("the translation differs by nan")."""
    import numpy as np

    if version == 3:
        import keras
    else:
        import tf_keras as keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"), keras.layers.Dense(2)])
    kernel = model.get_layer("hidden").get_weights()
    kernel[0][1, 2] = np.nan
    model.get_layer("hidden").set_weights(kernel)
    path = tmp_path / "nan.keras"
    model.save(path)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(JobInputError, match=r"model: weight .*hidden.*kernel.* holds 1 NaN or infinite value:"):
        load_model(path, work, 10**9)


def test_weights_that_do_not_fit_the_configuration_are_named_with_their_cause(tmp_path):
    """The Keras 3 load error is several lines: its cause is on the second; and it was wrapped
    twice ("model: cannot be loaded: model: cannot be loaded with Keras 3: ...")."""
    import zipfile

    import keras

    from pruning_worker.runner import clean_line

    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(2)])
    large = keras.Sequential([keras.Input((4,)), keras.layers.Dense(32, name="hidden"), keras.layers.Dense(2)])
    small.save(tmp_path / "small.keras")
    large.save(tmp_path / "large.keras")
    mixed = tmp_path / "mixed.keras"
    with zipfile.ZipFile(tmp_path / "small.keras") as a, zipfile.ZipFile(tmp_path / "large.keras") as b:
        with zipfile.ZipFile(mixed, "w") as out:
            for name in a.namelist():
                out.writestr(name, (b if name == "model.weights.h5" else a).read(name))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(JobInputError) as error:
        load_model(mixed, work, 10**9)
    line = clean_line(str(error.value), 500)
    assert line.startswith("model: cannot be loaded with Keras 3:") and "model: cannot be loaded:" not in line
    assert line.count("hidden") >= 2 and not line.endswith(":")  # the object and what went wrong with it


def test_a_job_error_shows_no_endpoint_of_the_deployment():
    """An S3 outage's error named the bucket's endpoint (host and port) to the tenant."""
    from pruning_worker.runner import clean_line

    line = clean_line(
        "the artifact store did not answer 3 attempts, the last with: Generic S3 error: Error performing GET "
        "http://10.1.2.3:9000/artifacts/prod/ab12?partNumber=2 in 1.5s - HTTP error; and https://s3.internal:443",
        300,
    )
    assert "10.1.2.3" not in line and "9000" not in line and "s3.internal" not in line and "prod" not in line
    assert "GET <url>/ab12 in 1.5s" in line and line.endswith("and <url>")


def test_a_job_error_keeps_a_weights_name_and_hides_only_paths():
    """A weight's name (model/layer/variable) was taken for a server path: "norm_none<path>/mean"."""
    from pruning_worker.runner import clean_line

    line = clean_line(
        "Shape mismatch in layer #0 (named norm)for weight norm_none/norm/mean. Received from /srv/pruning/jobs/"
        "a1/model.h5 and 'C:\\work\\jobs\\b2\\m.keras'",
        300,
    )
    assert "for weight norm_none/norm/mean." in line
    assert "srv" not in line and "jobs" not in line and "from <path>/model.h5 and '<path>/m.keras'" in line


def test_keras_s_slow_callback_warning_about_the_service_s_own_callbacks_is_dropped():
    """It told a user of a tiny model to "check your callbacks": a job's callbacks are the service's."""
    import logging

    import pruning_worker.callbacks  # noqa: F401 - installs the filter

    tf_log = logging.getLogger("tensorflow")
    slow = tf_log.makeRecord(
        "tensorflow",
        logging.WARNING,
        __file__,
        1,
        "Callback method `on_train_batch_end` is slow compared to the batch time (batch time: 0.0010s vs "
        "`on_train_batch_end` time: 0.0020s). Check your callbacks.",
        (),
        None,
    )
    other = tf_log.makeRecord("tensorflow", logging.WARNING, __file__, 1, "something else", (), None)
    assert not all(f.filter(slow) for f in tf_log.filters)
    assert all(f.filter(other) for f in tf_log.filters)


def test_a_path_right_after_a_sentence_s_full_stop_is_hidden_too():
    """TFLite's converter runs its sentence into the worker's path: "...FlatBuffer./srv/.venv/bin/celery"."""
    from pruning_worker.runner import clean_line

    line = clean_line(
        "ConverterError: Could not translate MLIR to FlatBuffer./work/main/.venv/bin/celery:10:1: error: "
        "'tf.MaxPool3D' op is neither a custom op nor a flex op",
        300,
    )
    assert "/work" not in line and ".venv" not in line
    assert line.startswith("ConverterError: Could not translate MLIR to FlatBuffer.<path>/celery:10:1: error:")
