"""A re-run attempt restores the last epoch checkpoint; one lost after fine-tuning ended
(while exporting or measuring) goes on from the restored model and runs no epoch again."""

from __future__ import annotations

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb

EPOCHS = 2


def _model():
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    plain = keras.Sequential([keras.layers.InputLayer(input_shape=(6,)), keras.layers.Dense(4)])
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1)
    model = tfmot.sparsity.keras.prune_low_magnitude(plain, pruning_schedule=schedule)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _fine_tune(model, checkpoints, x, y) -> list[int]:
    """Fine-tunes for EPOCHS epochs from what ``checkpoints`` holds; the batches it ran."""
    import tf_keras as keras

    from pruning_worker import train

    steps: list[int] = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)

    with train.checkpointing(checkpoints):
        train.fine_tune(model, x, y, pb.TrainingSpec(epochs=EPOCHS, batch_size=8, validation_split=0.25), [Steps()])
    return steps


@pytest.mark.parametrize("lost_after", [1, EPOCHS])
def test_a_rerun_attempt_runs_only_the_epochs_left(tmp_path, lost_after):
    from pruning_core.objectstore import LocalStore
    from pruning_worker import train

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 6), dtype=np.float32), rng.integers(0, 4, 64)
    store = LocalStore(tmp_path / "artifacts")
    job_id = "0" * 24
    logs: list[str] = []
    checkpoints = train.Checkpoints(store, job_id, store.checkpoint_dir(job_id, tmp_path / "work"), logs.append)

    first = _model()
    training = pb.TrainingSpec(epochs=lost_after, batch_size=8, validation_split=0.25)
    with train.checkpointing(checkpoints):  # the lost attempt got this far
        train.fine_tune(first, x, y, training, [])
    kept = [w.copy() for w in first.get_weights()]

    again = _model()
    steps = _fine_tune(again, checkpoints, x, y)
    per_epoch = 6  # 48 training samples in batches of 8
    assert len(steps) == (EPOCHS - lost_after) * per_epoch  # no epoch is run twice
    assert int(again.optimizer.iterations.numpy()) == EPOCHS * per_epoch
    assert any(f"resuming from the checkpoint of epoch {lost_after}/{EPOCHS}" in line for line in logs)
    if lost_after == EPOCHS:
        assert all(np.array_equal(a, b) for a, b in zip(kept, again.get_weights(), strict=True))


def test_a_checkpoint_the_store_cannot_give_now_stops_the_attempt_instead_of_starting_over(tmp_path):
    """A re-run attempt whose store does not answer as it fetches the last checkpoint (its inputs
    came from the host's cache) stops, to be re-queued as the store's outage; starting over
    would throw the kept epochs away, and its first checkpoint sent would delete them."""
    from pruning_core.objectstore import LocalStore, StoreUnavailable
    from pruning_worker import train

    class Down(LocalStore):
        def pull_checkpoint(self, job_id, directory):
            raise StoreUnavailable("Generic S3 error: connection refused")

    store = Down(tmp_path / "store")
    checkpoints = train.Checkpoints(store, "job1", tmp_path / "scratch" / "checkpoints", lambda _: None)
    with pytest.raises(StoreUnavailable):
        checkpoints.latest()

    class Unreadable(LocalStore):
        def pull_checkpoint(self, job_id, directory):
            raise ValueError("latest.json is not JSON")

    checkpoints = train.Checkpoints(Unreadable(tmp_path / "store"), "job1", tmp_path / "s2", lambda _: None)
    assert checkpoints.latest() is None  # nothing usable: the job starts over, as before


def test_a_stale_attempt_keeps_no_checkpoint_over_the_newer_attempt_s(tmp_path):
    """Two attempts of one job keep their checkpoints under the same keys, and a save deletes
    the others: a stale attempt (still training after a newer one took the job over) stops at
    its next save, writing and deleting nothing, and the newer attempt's checkpoint stays."""
    from pruning_core.objectstore import LocalStore, checkpoint_record
    from pruning_core.store import StaleAttempt
    from pruning_worker import train

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 6), dtype=np.float32), rng.integers(0, 4, 64)
    store = LocalStore(tmp_path / "artifacts")
    job_id = "1" * 24
    newer = train.Checkpoints(store, job_id, store.checkpoint_dir(job_id, tmp_path / "new"), lambda _: None, attempt=2)
    with train.checkpointing(newer):  # the newer attempt kept its first epoch
        train.fine_tune(_model(), x, y, pb.TrainingSpec(epochs=1, batch_size=8, validation_split=0.25), [])
    kept = sorted(p.name for p in newer.directory.iterdir())
    record = (newer.directory / checkpoint_record(2)).read_bytes()

    def superseded():
        raise StaleAttempt(f"job {job_id} attempt 1 is stale")

    stale = train.Checkpoints(
        store, job_id, store.checkpoint_dir(job_id, tmp_path / "old"), lambda _: None, superseded, attempt=1
    )
    with train.checkpointing(stale), pytest.raises(StaleAttempt):
        train.fine_tune(_model(), x, y, pb.TrainingSpec(epochs=3, batch_size=8, validation_split=0.25), [])
    assert sorted(p.name for p in newer.directory.iterdir()) == kept
    assert (newer.directory / checkpoint_record(2)).read_bytes() == record


def test_a_checkpoint_whose_owner_cannot_be_known_is_skipped(tmp_path):
    """With the job store away, whose job it is cannot be known: the checkpoint is not kept
    (it only saves time) and fine-tuning goes on."""
    import redis

    from pruning_core.objectstore import LocalStore
    from pruning_worker import train

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 6), dtype=np.float32), rng.integers(0, 4, 64)
    store = LocalStore(tmp_path / "artifacts")
    logs: list[str] = []

    def away():
        raise redis.ConnectionError("Connection refused")

    checkpoints = train.Checkpoints(store, "2" * 24, store.checkpoint_dir("2" * 24, tmp_path / "w"), logs.append, away)
    with train.checkpointing(checkpoints):
        train.fine_tune(_model(), x, y, pb.TrainingSpec(epochs=2, batch_size=8, validation_split=0.25), [])
    assert checkpoints.latest() is None
    assert sum("was not kept: the job store did not answer" in line for line in logs) == 2


def test_a_stale_attempt_whose_resume_fails_deletes_nothing_of_the_newer_attempt_s(tmp_path):
    """A stale attempt that cannot read the checkpoint it finds (the newer attempt rotated the
    epoch it named away meanwhile, or it does not fit) starts over, which deletes the job's
    checkpoints: fenced too, it stops instead, and the newer attempt's checkpoint stays."""
    from pruning_core.objectstore import LocalStore, checkpoint_record
    from pruning_core.store import StaleAttempt
    from pruning_worker import train

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 6), dtype=np.float32), rng.integers(0, 4, 64)
    store = LocalStore(tmp_path / "artifacts")
    job_id = "3" * 24
    newer = train.Checkpoints(store, job_id, store.checkpoint_dir(job_id, tmp_path / "new"), lambda _: None, attempt=2)
    with train.checkpointing(newer):
        train.fine_tune(_model(), x, y, pb.TrainingSpec(epochs=1, batch_size=8, validation_split=0.25), [])
    kept = sorted(p.name for p in newer.directory.iterdir())
    assert checkpoint_record(2) in kept

    def superseded():
        raise StaleAttempt(f"job {job_id} attempt 1 is stale")

    stale = train.Checkpoints(
        store, job_id, store.checkpoint_dir(job_id, tmp_path / "old"), lambda _: None, superseded, attempt=1
    )
    other = _model_of_width(5)  # the checkpoint does not fit it: its resume fails
    with train.checkpointing(stale), pytest.raises(StaleAttempt):
        train.fine_tune(other, x, y, pb.TrainingSpec(epochs=3, batch_size=8, validation_split=0.25), [])
    assert sorted(p.name for p in newer.directory.iterdir()) == kept


def test_a_stale_attempt_past_its_ownership_check_neither_deletes_nor_shadows_the_newer_attempt_s(tmp_path):
    """The window the ownership check leaves: a stale attempt that passed it just before a newer
    attempt took the job over writes its checkpoint, starts over (clears) and writes again. Its
    files are named by its attempt: the newer attempt's checkpoint stays, and is the one the
    next attempt resumes from."""
    from pruning_core.objectstore import LocalStore, checkpoint_record
    from pruning_worker import train

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 6), dtype=np.float32), rng.integers(0, 4, 64)
    store = LocalStore(tmp_path / "artifacts")
    job_id = "4" * 24
    directory = store.checkpoint_dir(job_id, tmp_path)
    newer = train.Checkpoints(store, job_id, directory, lambda _: None, attempt=3)
    with train.checkpointing(newer):
        train.fine_tune(_model(), x, y, pb.TrainingSpec(epochs=1, batch_size=8, validation_split=0.25), [])
    newer_files = sorted(p.name for p in directory.iterdir())
    assert newer.latest() == {"epoch": 1, "prefix": "a3-epoch-1", "history": newer.latest()["history"]}

    stale = train.Checkpoints(store, job_id, directory, lambda _: None, attempt=2)  # its check passes
    model = _model()
    train.fine_tune(model, x, y, pb.TrainingSpec(epochs=1, batch_size=8, validation_split=0.25), [])  # no checkpoint
    stale.save(model, 2, [])
    stale.save(model, 3, [])
    assert {"a2-epoch-3.index", checkpoint_record(2)} <= {p.name for p in directory.iterdir()}
    assert not any(p.name.startswith("a2-epoch-2.") for p in directory.iterdir())  # its own earlier epoch went
    stale.clear()
    assert sorted(p.name for p in directory.iterdir()) == newer_files  # its own went, the newer's stayed
    stale.save(model, 4, [])
    assert train.Checkpoints(store, job_id, directory, lambda _: None, attempt=4).latest()["prefix"] == "a3-epoch-1"

    newer.save(model, 2, [])  # the newer attempt's next save deletes what the stale one wrote
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        name.replace("a3-epoch-1", "a3-epoch-2") for name in newer_files
    )


def test_checkpoints_written_before_attempts_named_them_are_read_and_then_superseded(tmp_path):
    """``latest.json`` and ``epoch-<n>.*`` (a job checkpointed by the previous version) count
    as attempt 0: the next attempt resumes from them, and its first save deletes them."""
    from pruning_core import objectstore

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "epoch-2.index").write_bytes(b"i")
    (directory / "epoch-2.data-00000-of-00001").write_bytes(b"d")
    (directory / "latest.json").write_text('{"epoch": 2, "prefix": "epoch-2", "history": []}')
    assert objectstore.read_checkpoint_record(directory) == {"epoch": 2, "prefix": "epoch-2", "history": []}
    objectstore.write_checkpoint_record(directory, b'{"epoch": 3, "prefix": "a1-epoch-3", "history": []}', 1)
    (directory / "a1-epoch-3.index").write_bytes(b"i")
    assert objectstore.read_checkpoint_record(directory)["prefix"] == "a1-epoch-3"
    (directory / "notes.txt").write_text("not a checkpoint")
    objectstore.drop_superseded_checkpoints(directory, 1, "a1-epoch-3")
    assert sorted(p.name for p in directory.iterdir()) == ["a1-epoch-3.index", "latest-1.json", "notes.txt"]


def _model_of_width(width: int):
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    plain = keras.Sequential([keras.layers.InputLayer(input_shape=(6,)), keras.layers.Dense(width)])
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1)
    model = tfmot.sparsity.keras.prune_low_magnitude(plain, pruning_schedule=schedule)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_an_attempt_of_ten_digits_reads_and_supersedes_its_own_checkpoints(tmp_path):
    """Job.attempt is an int32: an attempt past 999,999,999 names its files with ten digits,
    and they must still be read, and superseded by its next epoch."""
    from pruning_core import objectstore

    attempt = 2_000_000_000
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for epoch in (1, 2):
        prefix = objectstore.checkpoint_prefix(attempt, epoch)
        (directory / f"{prefix}.index").write_bytes(b"i")
        record = f'{{"epoch": {epoch}, "prefix": "{prefix}", "history": []}}'.encode()
        objectstore.write_checkpoint_record(directory, record, attempt)
        objectstore.drop_superseded_checkpoints(directory, attempt, prefix)
    assert objectstore.read_checkpoint_record(directory) == {"epoch": 2, "prefix": f"a{attempt}-epoch-2", "history": []}
    assert sorted(p.name for p in directory.iterdir()) == [f"a{attempt}-epoch-2.index", f"latest-{attempt}.json"]


@pytest.mark.parametrize("stop_at", ["last step", "mid-epoch", "cancel at the last step"])
def test_a_shutdown_at_an_epochs_last_step_keeps_the_epoch(tmp_path, monkeypatch, stop_at):
    """The worker shutting down as epoch 2 of 2 finished: the epoch was not kept, and the next
    attempt ran it again from epoch 1's checkpoint. A stop inside an epoch keeps nothing of it,
    nor does a cancel (nothing resumes a cancelled job)."""
    import tf_keras as keras

    from pruning_core.objectstore import LocalStore
    from pruning_worker import shutdown, train

    monkeypatch.setattr(shutdown, "due", lambda: not stop_at.startswith("cancel"))

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 6), dtype=np.float32), rng.integers(0, 4, 64)
    store = LocalStore(tmp_path / "artifacts")
    checkpoints = train.Checkpoints(
        store, "5" * 24, store.checkpoint_dir("5" * 24, tmp_path), lambda _: None, attempt=1
    )
    per_epoch = 6  # 48 training samples in batches of 8

    class Stop(keras.callbacks.Callback):  # as the progress callback does when the worker stops
        def on_train_batch_end(self, batch, logs=None):
            if self.params["steps"] and batch + 1 == (3 if stop_at == "mid-epoch" else per_epoch):
                self.model.stop_training = True

    with train.checkpointing(checkpoints):
        train.fine_tune(_model(), x, y, pb.TrainingSpec(epochs=2, batch_size=8, validation_split=0.25), [Stop()])
    latest = checkpoints.latest()
    assert (latest and latest["epoch"]) == (1 if stop_at == "last step" else None)
