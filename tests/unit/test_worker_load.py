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
