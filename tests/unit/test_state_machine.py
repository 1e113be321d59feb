"""Job states, attempts and fencing on a real Redis (no worker process)."""

import asyncio
import time
import uuid

import pytest
from google.rpc import code_pb2

from pruning.v1 import pruning_pb2 as pb
from pruning_core.store import AsyncJobStore, JobStore, StaleAttempt, new_job_id, state_event
from pruning_worker.runner import Reporter, _claim


@pytest.fixture()
def stores(redis_url):
    prefix = f"pruning-unit-{uuid.uuid4().hex[:8]}"
    sync = JobStore.from_url(redis_url, prefix)
    yield sync, prefix
    keys = list(sync.redis.scan_iter(f"{prefix}:*"))
    if keys:
        sync.redis.delete(*keys)


def create(redis_url, prefix, key=""):
    async def go():
        store = AsyncJobStore.from_url(redis_url, prefix)
        job = pb.Job(id=new_job_id(), spec=pb.JobSpec(model_id="m"))
        try:
            return await store.create("t", job, key)
        finally:
            await store.redis.aclose()

    return asyncio.run(go())


def events(store, job_id):
    return [pb.JobEvent.FromString(f[b"e"]) for _, f in store.redis.xrange(store.keys.events(job_id))]


def test_claim_runs_a_queued_job_once_per_delivery(redis_url, stores):
    store, prefix = stores
    job, created = create(redis_url, prefix)
    assert created and job.state == pb.JOB_STATE_QUEUED and job.attempt == 0
    first = _claim(store, job.id, "w1")
    assert first.state == pb.JOB_STATE_RUNNING and first.attempt == 1
    # The claim itself puts the attempt where the reaper looks: a worker lost before its first
    # heartbeat does not leave the job RUNNING for good.
    beat = store.last_heartbeat(job.id)
    assert beat is not None and abs(time.time() - beat) < 30
    store.done_running(job.id)
    # Redelivered after the first worker was lost: a new attempt fences the old one out.
    second = _claim(store, job.id, "w2")
    assert second.attempt == 2 and store.last_heartbeat(job.id) is not None
    stale = Reporter(store, job.id, attempt=1, interval_s=0)
    with pytest.raises(StaleAttempt):
        stale.progress(pb.Progress(phase="fine_tune", step=5), force=True)
    with pytest.raises(StaleAttempt):
        stale.finish(pb.JOB_STATE_SUCCEEDED, result=pb.PruneResult(device="stale"))
    with pytest.raises(StaleAttempt):
        stale.confirm()  # asked before each epoch checkpoint
    current = Reporter(store, job.id, attempt=2, interval_s=0)
    current.confirm()
    final = current.finish(pb.JOB_STATE_SUCCEEDED, result=pb.PruneResult(device="CPU"))
    assert final.state == pb.JOB_STATE_SUCCEEDED and final.result.device == "CPU"
    # Terminal states never change again.
    assert _claim(store, job.id, "w3") is None
    assert store.get(job.id).state == pb.JOB_STATE_SUCCEEDED
    changes = [
        (getattr(e.state_change, "from"), e.state_change.to, e.state_change.attempt)
        for e in events(store, job.id)
        if e.WhichOneof("kind") == "state_change"
    ]
    assert changes == [
        (pb.JOB_STATE_UNSPECIFIED, pb.JOB_STATE_QUEUED, 0),
        (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING, 1),
        (pb.JOB_STATE_RUNNING, pb.JOB_STATE_RUNNING, 2),
        (pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED, 2),
    ]


def test_idempotency_key_returns_the_same_job(redis_url, stores):
    _, prefix = stores
    first, created = create(redis_url, prefix, key="k")
    again, created_again = create(redis_url, prefix, key="k")
    other, _ = create(redis_url, prefix, key="other")
    assert created and not created_again and first.id == again.id != other.id


def test_an_idempotency_key_lasts_as_long_as_its_job_or_sweep(redis_url, stores):
    """No expiry of its own: a pipeline's retry weeks later (a backfill) finds the job while
    its record is kept; the retention deletes the key with the job or sweep."""
    from pruning_core.sweeps import SweepStore

    store, prefix = stores
    job, _ = create(redis_url, prefix, key="late")
    assert store.redis.ttl(store.keys.idempotency("t", "late")) == -1  # set, never expiring
    asyncio.run(_delete_job(redis_url, prefix, job.id))
    assert not store.redis.exists(store.keys.idempotency("t", "late"))

    async def sweep():
        async_store = AsyncJobStore.from_url(redis_url, prefix)
        sweeps = SweepStore(async_store.redis, prefix)
        try:
            made, created = await sweeps.create("t", pb.Sweep(id="s1"), "late-sweep", "fp")
            assert created
            assert await async_store.redis.ttl(sweeps._idempotency("t", "late-sweep")) == -1
            await sweeps.delete(made.id)
            assert not await async_store.redis.exists(sweeps._idempotency("t", "late-sweep"))
        finally:
            await async_store.redis.aclose()

    asyncio.run(sweep())


def test_keys_written_to_expire_after_7_days_lose_their_expiry_once(redis_url, stores):
    """A deployment that ran before keys lasted as long as their job: the server's start takes
    the expiry off each job's and sweep's key, once."""
    from pruning_core.sweeps import SweepStore

    store, prefix = stores
    job, _ = create(redis_url, prefix, key="old")
    store.redis.expire(store.keys.idempotency("t", "old"), 7 * 86400)  # as the old script wrote it

    async def go():
        async_store = AsyncJobStore.from_url(redis_url, prefix)
        sweeps = SweepStore(async_store.redis, prefix)
        try:
            made, _ = await sweeps.create("t", pb.Sweep(id="s2"), "old-sweep", "fp")
            await async_store.redis.expire(sweeps._idempotency("t", "old-sweep"), 7 * 86400)
            await sweeps.lock(made.id, 60_000)  # a string key beside the records
            changed = await async_store.persist_idempotency_keys(batch=1)
            again = await async_store.persist_idempotency_keys()
            ttl = await async_store.redis.ttl(sweeps._idempotency("t", "old-sweep"))
            return changed, again, ttl
        finally:
            await async_store.redis.aclose()

    assert asyncio.run(go()) == (2, 0, -1)
    assert store.redis.ttl(store.keys.idempotency("t", "old")) == -1


async def _delete_job(redis_url, prefix, job_id):
    store = AsyncJobStore.from_url(redis_url, prefix)
    try:
        await store.delete_job(job_id)
    finally:
        await store.redis.aclose()


def test_cancel_flag_stops_a_claim_and_a_running_job(redis_url, stores):
    store, prefix = stores
    job, _ = create(redis_url, prefix)
    store.redis.set(store.keys.cancel(job.id), 1)
    assert _claim(store, job.id, "w") is None
    assert store.get(job.id).state == pb.JOB_STATE_CANCELLED

    running, _ = create(redis_url, prefix)
    claimed = _claim(store, running.id, "w")
    store.update(running.id, lambda j: [state_event(j, pb.JOB_STATE_CANCELLING)])
    store.redis.set(store.keys.cancel(running.id), 1)
    reporter = Reporter(store, running.id, claimed.attempt, interval_s=0)
    assert reporter.should_stop()
    # A job asked to cancel ends CANCELLED even if its work finished meanwhile.
    assert reporter.finish(pb.JOB_STATE_SUCCEEDED, result=pb.PruneResult()).state == pb.JOB_STATE_CANCELLED


def test_progress_events_are_throttled(redis_url, stores):
    store, prefix = stores
    job, _ = create(redis_url, prefix)
    claimed = _claim(store, job.id, "w")
    reporter = Reporter(store, job.id, claimed.attempt, interval_s=60)
    for step in range(1, 50):
        reporter.progress(pb.Progress(phase="fine_tune", step=step))
    reporter.progress(pb.Progress(phase="fine_tune", step=50), force=True)
    steps = [e.progress.step for e in events(store, job.id) if e.WhichOneof("kind") == "progress"]
    assert steps == [1, 50]
    assert store.get(job.id).progress.step == 50


def test_a_cancel_is_seen_at_the_next_phase_and_between_exports(redis_url, stores):
    from pruning_worker.errors import Cancelled

    store, prefix = stores
    job, _ = create(redis_url, prefix)
    _claim(store, job.id, "w1")
    reporter = Reporter(store, job.id, attempt=1, interval_s=60)
    reporter.phase("load", "loading the model")  # no cancel asked: goes on
    reporter.check_between_steps()

    async def cancel():
        client = AsyncJobStore.from_url(redis_url, prefix)
        try:
            await client.request_cancel(job.id)
        finally:
            await client.redis.aclose()

    asyncio.run(cancel())
    with pytest.raises(Cancelled):
        reporter.phase("baseline", "evaluating the baseline")  # not only while training
    with pytest.raises(Cancelled):
        reporter.check_between_steps()  # before each export and before storing them


def test_scratch_files_of_a_job_live_in_its_directory(tmp_path):
    """TensorFlow's scratch directories (Python's tempfile) go under the job's directory, which
    the next job's sweep removes if the worker is killed, not the system's temp directory."""
    import pathlib
    import tempfile

    from pruning_worker.runner import job_dir

    before = tempfile.gettempdir()
    with job_dir(tmp_path / "work", "j1") as path:
        scratch = pathlib.Path(tempfile.mkdtemp())
        assert path in scratch.parents
    assert not path.exists() and tempfile.gettempdir() == before


def test_a_second_claim_never_takes_over_an_attempt_that_shows_itself_alive(redis_url, stores):
    store, prefix = stores
    job, _ = create(redis_url, prefix)
    first = _claim(store, job.id, "w1", alive_s=60)
    assert first is not None and first.attempt == 1
    assert _claim(store, job.id, "w2", alive_s=60) is None  # its claim event is fresh
    assert store.get(job.id).attempt == 1 and store.get(job.id).worker == "w1"
    assert _claim(store, job.id, "w2", alive_s=0) is not None  # silent for longer than alive_s: taken over
    store.update(job.id, lambda j: (j.progress.CopyFrom(pb.Progress(phase="fine_tune", epoch=2)), [])[1])
    store.update(job.id, lambda j: [state_event(j, pb.JOB_STATE_QUEUED)])  # the reaper's re-queue
    store.heartbeat(job.id)  # however fresh the old attempt's last heartbeat
    again = _claim(store, job.id, "w3", alive_s=60)
    assert again is not None and again.attempt == 3
    assert not again.HasField("progress")  # the lost attempt's progress is not shown as this one's


def test_a_failed_store_of_exports_leaves_no_record_it_added(stores, tmp_path):
    """The second export fails to store: the first one's new record goes too (a failed job
    lists no export), while a record the tenant held before stays."""
    from pruning_core.settings import Settings
    from pruning_core.store import ArtifactRecord
    from pruning_worker.runner import _store_outputs, _take_back

    store, prefix = stores
    settings = Settings(state_dir=tmp_path / "state", key_prefix=prefix)
    held = tmp_path / "held.keras"
    held.write_bytes(b"a model the tenant stored before")
    fresh = tmp_path / "fresh.tflite"
    fresh.write_bytes(b"an export of this job")
    first = _store_outputs(settings, store, "j" * 24, "t", [(held, "keras")])[0]
    store.keep_exports("j" * 24, "t", attempt=0)  # that job succeeded
    assert _holds(store, "t", first.id)

    outputs = [(held, "keras"), (fresh, "tflite"), (tmp_path / "missing.onnx", "onnx")]
    with pytest.raises(FileNotFoundError):
        _store_outputs(settings, store, "k" * 24, "t", outputs)
    _take_back(store, "k" * 24, "t", 0)  # what the runner does as the attempt fails
    assert _holds(store, "t", first.id)
    assert isinstance(store.get_artifact("t", first.id), ArtifactRecord)
    fresh_id = __import__("hashlib").sha256(fresh.read_bytes()).hexdigest()
    assert not _holds(store, "t", fresh_id)
    with pytest.raises(KeyError):
        store.get_artifact("t", fresh_id)
    assert not store.redis.exists(store.keys.artifact_owners(fresh_id))
    assert store.redis.zscore(store.keys.artifacts_by_time(), f"{fresh_id}:t") is None


def test_a_record_written_again_by_another_job_is_not_rolled_back(stores):
    """Two jobs of a tenant store byte-identical exports; the first fails and rolls back what
    it added: the record the second job wrote again (and returns in its result) stays."""
    import time

    from pruning_core.store import ArtifactRecord

    store, _ = stores
    first = ArtifactRecord("ab" * 32, pb.ARTIFACT_KIND_EXPORT, "keras", "m.keras", 10, time.time(), {}, "a" * 24)
    second = ArtifactRecord("ab" * 32, pb.ARTIFACT_KIND_EXPORT, "keras", "m.keras", 10, first.created + 1, {}, "b" * 24)
    store.put_artifact("t", first, staged_for="a" * 24, attempt=1)
    store.put_artifact("t", second, staged_for="b" * 24, attempt=1)  # the other job's identical export
    assert store.get_artifact("t", first.id).job == "a" * 24  # the job that stored it first
    assert not store.take_back_exports("a" * 24, "t")
    assert _holds(store, "t", first.id) and store.get_artifact("t", first.id).created == second.created
    assert store.get_artifact("t", first.id).job == "b" * 24  # not the job that failed
    store.redis.hset(store.keys.staged("b" * 24), first.id, f"1 {second.created}")  # as if it staged it
    assert store.take_back_exports("b" * 24, "t") == 1
    assert not _holds(store, "t", first.id)
    assert not store.redis.exists(store.keys.artifact_owners(first.id))


def test_a_success_keeps_its_own_attempt_s_exports_and_takes_back_a_stale_one_s(stores):
    """An attempt thought lost went on and stored an export before the next attempt succeeded:
    the success keeps its own records (its result lists them) and takes back the stale one's."""
    import time

    from pruning_core.store import ArtifactRecord

    store, _ = stores
    now = time.time()
    stale = ArtifactRecord("cd" * 32, pb.ARTIFACT_KIND_EXPORT, "keras", "old.keras", 10, now, {})
    own = ArtifactRecord("ef" * 32, pb.ARTIFACT_KIND_EXPORT, "keras", "new.keras", 10, now, {})
    store.put_artifact("t", stale, staged_for="c" * 24, attempt=1)
    store.put_artifact("t", own, staged_for="c" * 24, attempt=2)
    store.keep_exports("c" * 24, "t", attempt=2)
    assert _holds(store, "t", own.id) and not _holds(store, "t", stale.id)
    assert not store.redis.exists(store.keys.staged("c" * 24))


def test_a_record_held_as_an_upload_kind_refuses_the_other_and_outlives_an_export(stores, tmp_path):
    """One record per content: a model's record must not turn into a dataset's (a file can be
    both) or an export's under the jobs naming it, whoever writes second, all in one script."""
    import dataclasses
    import hashlib
    import time

    from pruning_core.settings import Settings
    from pruning_core.store import UPLOAD_KINDS, ArtifactRecord, HeldAsAnotherKind
    from pruning_worker.runner import _store_outputs

    store, prefix = stores
    both = tmp_path / "both.keras"
    both.write_bytes(b"valid as a model and as a dataset")
    artifact_id = hashlib.sha256(both.read_bytes()).hexdigest()
    model = ArtifactRecord(artifact_id, pb.ARTIFACT_KIND_MODEL, "keras", "m.keras", 33, time.time(), {"a": 1})
    dataset = ArtifactRecord(artifact_id, pb.ARTIFACT_KIND_DATASET, "npz", "d.npz", 33, time.time(), {})
    assert store.put_artifact("t", model, refuse=[pb.ARTIFACT_KIND_DATASET])
    with pytest.raises(HeldAsAnotherKind) as refused:
        store.put_artifact("t", dataset, refuse=[pb.ARTIFACT_KIND_MODEL])
    assert refused.value.kind == pb.ARTIFACT_KIND_MODEL and refused.value.artifact_id == artifact_id
    assert store.get_artifact("t", artifact_id) == model
    by_kind = store.keys.tenant_artifacts_by_time("t", pb.ARTIFACT_KIND_DATASET)
    assert store.redis.zscore(by_kind, artifact_id) is None
    assert store.put_artifact("other-tenant", dataset, refuse=[pb.ARTIFACT_KIND_MODEL])  # its own record

    # a job's export of the same bytes: the tenant's model stays a model, and is not staged;
    # its retention starts over (the job's result lists it), and the result says what it is
    settings = Settings(state_dir=tmp_path / "state", key_prefix=prefix)
    exported = _store_outputs(settings, store, "j" * 24, "t", [(both, "keras")])[0]
    kept = store.get_artifact("t", artifact_id)
    assert kept == dataclasses.replace(model, created=kept.created) and kept.created > model.created
    assert store.redis.zscore(store.keys.artifacts_by_time(), f"{artifact_id}:t") == kept.created
    assert (exported.id, exported.kind, exported.filename) == (artifact_id, pb.ARTIFACT_KIND_MODEL, "m.keras")
    assert not store.redis.exists(store.keys.staged("j" * 24))
    store.take_back_exports("j" * 24, "t")  # the job fails: the model stays
    assert _holds(store, "t", artifact_id)

    # a shared record from before per-tenant records counts as the tenant's
    legacy = ArtifactRecord("34" * 32, pb.ARTIFACT_KIND_MODEL, "keras", "old.keras", 5, 1.0, {})
    store.redis.hset(store.keys.artifact(legacy.id), mapping=legacy.to_mapping())
    store.redis.sadd(store.keys.tenant_artifacts("t"), legacy.id)
    with pytest.raises(HeldAsAnotherKind):
        store.put_artifact("t", dataclasses.replace(legacy, kind=pb.ARTIFACT_KIND_DATASET), refuse=[1])
    as_export = dataclasses.replace(legacy, kind=pb.ARTIFACT_KIND_EXPORT)
    assert not store.put_artifact("t", as_export, staged_for="k" * 24, keep=UPLOAD_KINDS)
    store.take_back_exports("k" * 24, "t")  # nothing staged: the tenant keeps its model
    assert store.get_artifact("t", legacy.id) == legacy

    # an export's record is no upload's: an upload of it as a model takes it over
    export = ArtifactRecord("12" * 32, pb.ARTIFACT_KIND_EXPORT, "keras", "p.keras", 5, time.time(), {})
    assert store.put_artifact("t", export, keep=UPLOAD_KINDS)
    as_model = ArtifactRecord("12" * 32, pb.ARTIFACT_KIND_MODEL, "keras", "p.keras", 5, time.time(), {})
    assert not store.put_artifact("t", as_model, refuse=[pb.ARTIFACT_KIND_DATASET])
    assert store.get_artifact("t", "12" * 32).kind == pb.ARTIFACT_KIND_MODEL


def test_uploads_of_one_content_as_both_kinds_at_once_leave_one_kind(redis_url, stores):
    """Many concurrent writes, half as a model and half as a dataset: one kind wins every
    time, the others are refused, and the record and the sets by kind agree."""
    import time

    from pruning_core.store import ArtifactRecord, HeldAsAnotherKind

    _, prefix = stores
    kinds = (pb.ARTIFACT_KIND_MODEL, pb.ARTIFACT_KIND_DATASET)

    async def race(artifact_id: str) -> list[str]:
        store = AsyncJobStore.from_url(redis_url, prefix)

        async def write(kind: int) -> str:
            record = ArtifactRecord(artifact_id, kind, "keras", "f", 1, time.time(), {})
            try:
                await store.put_artifact("t", record, refuse=[k for k in kinds if k != kind])
                return f"stored {kind}"
            except HeldAsAnotherKind as held:
                return f"refused {held.kind}"

        try:
            return await asyncio.gather(*(write(kinds[n % 2]) for n in range(20)))
        finally:
            await store.redis.aclose()

    for n in range(5):
        artifact_id = f"{n:02d}" * 32
        outcomes = asyncio.run(race(artifact_id))
        sync, _ = stores
        held = sync.get_artifact("t", artifact_id).kind
        assert sorted(set(outcomes)) == [f"refused {held}", f"stored {held}"], outcomes
        assert outcomes.count(f"stored {held}") == 10
        for kind in kinds:
            listed = sync.redis.zscore(sync.keys.tenant_artifacts_by_time("t", kind), artifact_id) is not None
            assert listed == (kind == held)


def test_a_job_cancelled_as_it_ends_lists_no_export(redis_url, stores, tmp_path, monkeypatch):
    """A cancel that lands after the exports were stored (here while MLflow logs the run) ends
    the job CANCELLED, and the export records it added go with it."""
    import hashlib

    from pruning_core.settings import Settings
    from pruning_core.store import state_event
    from pruning_worker import mlflow_hook, pipeline
    from pruning_worker.runner import _run_claimed

    store, prefix = stores
    job, _ = create(redis_url, prefix)
    claimed = _claim(store, job.id, "w1")
    export = tmp_path / "pruned.keras"
    export.write_bytes(b"the pruned model of a job cancelled as it ended")
    monkeypatch.setattr(pipeline.Inputs, "resolve", staticmethod(lambda *a, **k: pipeline.Inputs(tmp_path, (), 0)))
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: (pb.PruneResult(device="CPU"), [(export, "keras")]))

    def cancelled_meanwhile(*args, **kwargs) -> None:
        store.update(job.id, lambda j: [state_event(j, pb.JOB_STATE_CANCELLING)])

    monkeypatch.setattr(mlflow_hook, "log_job", cancelled_meanwhile)
    settings = Settings(
        state_dir=tmp_path / "state", key_prefix=prefix, work_dir=tmp_path / "work", mlflow_tracking_uri="file:///x"
    )
    final = _run_claimed(store, claimed, settings)
    assert final is not None and final.state == pb.JOB_STATE_CANCELLED
    assert not _holds(store, "t", hashlib.sha256(export.read_bytes()).hexdigest())


def _holds(store: JobStore, tenant: str, artifact_id: str) -> bool:
    """Whether the tenant holds a record of the artifact."""
    return bool(store.redis.sismember(store.keys.tenant_artifacts(tenant), artifact_id))


def test_exports_of_an_attempt_lost_while_storing_them_are_taken_back(redis_url, stores, tmp_path, monkeypatch):
    """A worker killed while storing its exports left a record the job never lists (it
    counted against the tenant's bytes for 30 days): the next attempt takes it back, and
    keeps its own exports once it succeeds."""
    import hashlib

    from pruning_core.settings import Settings
    from pruning_worker import pipeline
    from pruning_worker.runner import _run_claimed, _store_outputs

    store, prefix = stores
    settings = Settings(state_dir=tmp_path / "state", key_prefix=prefix, work_dir=tmp_path / "work")
    job, _ = create(redis_url, prefix)
    lost = tmp_path / "lost.keras"
    lost.write_bytes(b"attempt 1's export, stored as its worker was killed")
    _claim(store, job.id, "w1")
    _store_outputs(settings, store, job.id, "t", [(lost, "keras")], attempt=1)  # then the worker died
    assert _holds(store, "t", hashlib.sha256(lost.read_bytes()).hexdigest())
    store.update(job.id, lambda j: [state_event(j, pb.JOB_STATE_QUEUED)])  # the reaper's re-queue

    export = tmp_path / "pruned.keras"
    export.write_bytes(b"attempt 2's export")
    monkeypatch.setattr(pipeline.Inputs, "resolve", staticmethod(lambda *a, **k: pipeline.Inputs(tmp_path, (), 0)))
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: (pb.PruneResult(device="CPU"), [(export, "keras")]))
    final = _run_claimed(store, _claim(store, job.id, "w2", alive_s=0), settings)
    assert final is not None and final.state == pb.JOB_STATE_SUCCEEDED
    assert not _holds(store, "t", hashlib.sha256(lost.read_bytes()).hexdigest())
    kept = hashlib.sha256(export.read_bytes()).hexdigest()
    assert _holds(store, "t", kept) and [a.id for a in final.result.artifacts] == [kept]
    assert not store.redis.exists(store.keys.staged(job.id))


def test_a_stale_attempt_takes_back_only_its_own_exports(stores, tmp_path):
    """Attempt 1 was presumed lost (frozen), attempt 2 stored its exports; attempt 1 wakes,
    finds itself stale and takes back what it staged, never attempt 2's records."""
    import hashlib

    from pruning_core.settings import Settings
    from pruning_worker.runner import _store_outputs, _take_back

    store, prefix = stores
    settings = Settings(state_dir=tmp_path / "state", key_prefix=prefix)
    job_id = "s" * 24
    mine, live = tmp_path / "stale.keras", tmp_path / "live.keras"
    mine.write_bytes(b"the stale attempt's export")
    live.write_bytes(b"the live attempt's export")
    _store_outputs(settings, store, job_id, "t", [(live, "keras")], attempt=2)
    _store_outputs(settings, store, job_id, "t", [(mine, "keras")], attempt=1)
    _take_back(store, job_id, "t", 1)
    assert _holds(store, "t", hashlib.sha256(live.read_bytes()).hexdigest())
    assert not _holds(store, "t", hashlib.sha256(mine.read_bytes()).hexdigest())


def test_an_attempt_the_artifact_store_stopped_is_retried_later_then_fails_unavailable(
    redis_url, stores, tmp_path, monkeypatch
):
    """S3 down at a job's start or export: not INTERNAL at once, but the job back in the queue
    (once its heartbeat stopped) to start again after a backoff, from its last checkpoint;
    once the store has stopped its attempts for artifact_store_patience_s, FAILED with
    UNAVAILABLE and the store's error. An attempt after a stop asks the store first."""
    import contextvars

    from obstore.exceptions import GenericError

    from pruning_core import telemetry
    from pruning_core.settings import Settings
    from pruning_worker import pipeline, runner
    from pruning_worker.app import app
    from pruning_worker.runner import ARTIFACT_STORE_RETRY_S, run_job

    store, prefix = stores
    settings = Settings(
        state_dir=tmp_path / "state",
        key_prefix=prefix,
        work_dir=tmp_path / "work",
        max_attempts=2,
        artifact_store_patience_s=600,
        redis_url=redis_url,
    )
    job, _ = create(redis_url, prefix)
    _claim(store, job.id, "lost-worker")  # an attempt lost otherwise (the reaper re-queued it)
    store.update(job.id, lambda j: [state_event(j, pb.JOB_STATE_QUEUED)])
    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, **options: sent.append(options))  # the broker
    monkeypatch.setattr(pipeline.Inputs, "resolve", staticmethod(lambda *a, **k: pipeline.Inputs(tmp_path, (), 0)))
    waits: list[float] = []  # the worker waits for its store (fetching nothing) up to the countdown
    monkeypatch.setattr(runner, "wait_for_store", lambda settings, most_s: waits.append(most_s) or False)

    def down(*args, **kwargs):
        raise GenericError("Generic S3 error: error sending request: Connection refused")

    monkeypatch.setattr(pipeline, "run", down)
    monkeypatch.setattr(telemetry, "_context", contextvars.ContextVar("test-log-context", default=None))
    assert run_job(job.id, settings, "w1") is None  # it binds the job's fields to the logs: not past this test
    record = store.get(job.id)
    assert record.state == pb.JOB_STATE_QUEUED and record.attempt == 2
    assert sent == [{"args": [job.id], "queue": settings.queue, "countdown": ARTIFACT_STORE_RETRY_S}]
    assert any("artifact store did not answer" in e.log.message for e in events(store, job.id))
    due = store.redis.zscore(store.keys.running(), job.id)  # watched from when its countdown ends
    assert due is not None and due > time.time() + ARTIFACT_STORE_RETRY_S - 10

    # The next attempt asks the store first: still down, it stops before it fetches or trains,
    # and goes back to the queue (twice the wait), within the patience.
    from pruning_core.objectstore import LocalStore

    ran = []
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: ran.append(1) or down())
    monkeypatch.setattr(LocalStore, "probe", down)
    store.update(job.id, lambda j: [state_event(j, pb.JOB_STATE_QUEUED)] if j.state != pb.JOB_STATE_QUEUED else [])
    assert run_job(job.id, settings, "w2") is None and not ran
    assert store.get(job.id).state == pb.JOB_STATE_QUEUED
    assert sent[-1]["countdown"] == 2 * ARTIFACT_STORE_RETRY_S

    store.redis.set(store.keys.artifact_store_stopped_at(job.id), repr(time.time() - 700))  # down 700 s now
    final = run_job(job.id, settings, "w3")  # past the patience: it fails
    assert final is not None and final.state == pb.JOB_STATE_FAILED and not ran
    assert final.error.code == code_pb2.UNAVAILABLE and "Connection refused" in final.error.message
    assert "3 attempts over 70" in final.error.message and len(sent) == 2
    assert waits == [ARTIFACT_STORE_RETRY_S, 2 * ARTIFACT_STORE_RETRY_S]  # not after the failure


def test_each_outage_of_the_artifact_store_gets_the_whole_patience(redis_url, stores, tmp_path, monkeypatch):
    """A job stopped by a short outage long ago, whose next attempt found the store answering,
    then stopped by a blip at its export: a new outage, re-queued, not FAILED for the time since
    the first stop (two short blips far apart failed a long job); its backoff starts afresh
    too. A store that answers and stops every attempt again fails the job once it did so
    ARTIFACT_STORE_MAX_ANSWERED times. The job's stop keys go when it ends."""
    import contextvars

    from obstore.exceptions import GenericError

    from pruning_core import telemetry
    from pruning_core.settings import Settings
    from pruning_worker import pipeline, runner
    from pruning_worker.app import app
    from pruning_worker.runner import ARTIFACT_STORE_MAX_ANSWERED, ARTIFACT_STORE_RETRY_S, run_job

    store, prefix = stores
    settings = Settings(
        state_dir=tmp_path / "state", key_prefix=prefix, work_dir=tmp_path / "work", artifact_store_patience_s=600,
        redis_url=redis_url,
    )  # fmt: skip
    job, _ = create(redis_url, prefix)
    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, **options: sent.append(options))
    monkeypatch.setattr(runner, "wait_for_store", lambda settings, most_s: True)
    monkeypatch.setattr(pipeline.Inputs, "resolve", staticmethod(lambda *a, **k: pipeline.Inputs(tmp_path, (), 0)))
    monkeypatch.setattr(telemetry, "_context", contextvars.ContextVar("test-log-context", default=None))

    def blip(*args, **kwargs):
        raise GenericError("Generic S3 error: error sending request: Connection reset")

    monkeypatch.setattr(pipeline, "run", blip)
    store.redis.set(store.keys.artifact_store_stops(job.id), 4)  # a long outage: its backoff was 4 min
    store.redis.set(store.keys.artifact_store_stopped_at(job.id), repr(time.time() - 700))  # 700 s ago
    assert run_job(job.id, settings, "w1") is None  # the store answered the probe: a new outage
    assert store.get(job.id).state == pb.JOB_STATE_QUEUED
    since = float(store.redis.get(store.keys.artifact_store_stopped_at(job.id)))
    assert time.time() - since < 60
    assert sent[-1]["countdown"] == ARTIFACT_STORE_RETRY_S  # its backoff afresh too

    for _ in range(2 * ARTIFACT_STORE_MAX_ANSWERED):
        final = run_job(job.id, settings, "w2")
        if final is not None:
            break
    assert final is not None and final.state == pb.JOB_STATE_FAILED and final.attempt == ARTIFACT_STORE_MAX_ANSWERED
    assert final.error.code == code_pb2.UNAVAILABLE
    assert f"answered and then stopped {ARTIFACT_STORE_MAX_ANSWERED} attempts" in final.error.message
    keys = store.keys
    assert not store.redis.exists(
        keys.artifact_store_stops(job.id), keys.artifact_store_stopped_at(job.id), keys.artifact_store_answers(job.id)
    )


def test_a_worker_whose_store_is_down_waits_for_it_fetching_nothing(tmp_path, monkeypatch):
    """wait_for_store: back at once when the store answers, at the first answer when it comes
    back, at the bound when it does not, and at once when the worker is shutting down."""
    from pruning_core.objectstore import LocalStore
    from pruning_core.settings import Settings
    from pruning_worker import shutdown
    from pruning_worker.runner import wait_for_store

    settings = Settings(state_dir=tmp_path / "state")
    probes: list[float] = []
    answers_from = [0]

    def probe(self):
        probes.append(time.monotonic())
        if len(probes) < answers_from[0]:
            raise OSError("Connection refused")

    monkeypatch.setattr(LocalStore, "probe", probe)
    assert wait_for_store(settings, 30.0, every_s=0.01) and len(probes) == 1
    probes.clear()
    answers_from[0] = 3
    assert wait_for_store(settings, 30.0, every_s=0.01) and len(probes) == 3
    probes.clear()
    answers_from[0] = 10**6
    started = time.monotonic()
    assert not wait_for_store(settings, 0.2, every_s=0.05)
    assert 0.2 <= time.monotonic() - started < 2 and 3 <= len(probes) <= 6
    monkeypatch.setattr(shutdown, "_stop_at", time.monotonic() + 60)
    started = time.monotonic()
    assert not wait_for_store(settings, 30.0, every_s=0.05) and time.monotonic() - started < 1


def test_a_failure_while_an_attempt_is_set_up_fails_the_job_at_once(redis_url, stores, tmp_path, monkeypatch):
    """An exception before the job's own handling (setting the attempt up) left it RUNNING: the
    reaper took it for a lost worker, re-queued it after its silence max_attempts times, and it
    ended minutes later as "the job's worker was lost"."""
    import contextvars

    from pruning_core import telemetry, validation
    from pruning_core.settings import Settings
    from pruning_worker.runner import run_job

    store, prefix = stores
    settings = Settings(
        state_dir=tmp_path / "state", key_prefix=prefix, work_dir=tmp_path / "work", redis_url=redis_url
    )
    job, _ = create(redis_url, prefix)

    def broken(*args, **kwargs):
        raise AttributeError("module 'pruning_core.validation' has no attribute 'time_limit'")

    monkeypatch.setattr(validation, "time_limit", broken)
    monkeypatch.setattr(telemetry, "_context", contextvars.ContextVar("test-log-context", default=None))
    final = run_job(job.id, settings, "w1")
    assert final is not None and final.state == pb.JOB_STATE_FAILED
    assert final.error.code == code_pb2.INTERNAL and "AttributeError" in final.error.message
    assert store.get(job.id).state == pb.JOB_STATE_FAILED
    assert store.redis.zscore(store.keys.running(), job.id) is None  # nothing for the reaper


def test_a_job_requeued_with_a_countdown_is_sent_again_if_nothing_claims_it_in_time(redis_url, stores, monkeypatch):
    """A task sent with a countdown waits in the worker that fetched it: if that worker dies,
    the reaper (which watches the running set) sends the job again once the countdown and its
    silence have passed, instead of the broker's redelivery hours later."""
    from pruning_core.settings import Settings
    from pruning_server import reaper
    from pruning_worker import app as worker_app
    from pruning_worker.runner import _release

    store, prefix = stores
    job, _ = create(redis_url, prefix)
    claimed = _claim(store, job.id, "w1")
    sent: list[tuple[str, float | None]] = []
    monkeypatch.setattr(
        worker_app.app, "send_task", lambda name, args, queue, countdown: sent.append((args[0], countdown))
    )
    assert _release(store, claimed, Settings(key_prefix=prefix, redis_url=redis_url), countdown=60.0)
    assert store.get(job.id).state == pb.JOB_STATE_QUEUED and sent == [(job.id, 60.0)]
    due = store.last_heartbeat(job.id)
    assert due is not None and 55 < due - time.time() <= 60  # watched from when it is due
    from pruning_core.telemetry import JobMetrics

    metrics = JobMetrics(store.redis, prefix)
    assert metrics.running_and_retrying() == (0, 1)  # waiting, not running
    store.redis.zadd(store.keys.running(), {job.id: time.time() - 120})  # due, and no worker took it yet
    assert metrics.running_and_retrying() == (0, 1)  # still QUEUED: not running
    running, _ = create(redis_url, prefix)
    _claim(store, running.id, "w2")
    assert metrics.running_and_retrying() == (1, 1)
    store.update(running.id, lambda j: [state_event(j, pb.JOB_STATE_SUCCEEDED)])  # its entry not yet removed
    assert metrics.running_and_retrying() == (0, 1)
    store.redis.zadd(store.keys.running(), {job.id: due})

    class Celery:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def send_task(self, name, args, queue):
            self.sent.append(args[0])

    async def reap(silent_s: float) -> list[str]:
        async_store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            await reaper.requeue_silent_jobs(async_store, celery, "q", silent_s)
        finally:
            await async_store.redis.aclose()
        return celery.sent

    celery = Celery()
    assert asyncio.run(reap(30.0)) == []  # not due yet
    store.expect_by(job.id, time.time() - 31)  # the countdown ran out 31 s ago and nothing claimed it
    assert asyncio.run(reap(30.0)) == [job.id]
    assert store.last_heartbeat(job.id) is None and store.get(job.id).state == pb.JOB_STATE_QUEUED


def test_the_reaper_does_not_forget_an_attempt_claimed_after_it_took_the_job(redis_url, stores):
    store, prefix = stores
    job, _ = create(redis_url, prefix)
    store.expect_by(job.id, time.time() - 100)  # silent for 100 s

    async def reap(claim_between: bool) -> float | None:
        async_store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            ids, claimed_at = await async_store.claim_silent(30.0)
            assert ids == [job.id]
            if claim_between:  # a worker took the re-sent task before the pass forgot the entry
                _claim(store, job.id, "w-new")
            await async_store.forget_running(job.id, claimed_at)
            return store.last_heartbeat(job.id)
        finally:
            await async_store.redis.aclose()

    assert asyncio.run(reap(False)) is None  # the claim's entry goes
    store.expect_by(job.id, time.time() - 100)
    assert asyncio.run(reap(True)) is not None  # the new attempt's stays


def test_an_ended_job_keeps_its_last_progress_but_not_its_eta():
    """An ended job's status (and ``status --json``) shows where it stopped, with no time left."""
    from pruning_core.store import state_event

    job = pb.Job(id="j", state=pb.JOB_STATE_RUNNING)
    job.progress.MergeFrom(pb.Progress(phase="fine_tune", step=3, total_steps=10, eta_seconds=42.0))
    state_event(job, pb.JOB_STATE_FAILED)
    assert job.progress.phase == "fine_tune" and job.progress.step == 3 and job.progress.eta_seconds == 0


def test_housekeeping_says_in_one_line_that_the_artifact_store_is_down(monkeypatch, caplog):
    """Each pass while S3 is down logged a whole traceback as an ERROR."""
    import logging

    from pruning_core.objectstore import StoreUnavailable
    from pruning_core.settings import Settings
    from pruning_server import reaper

    def down(*args, **kwargs):
        raise StoreUnavailable("Generic S3 error: Error performing PUT ... Connection refused")

    monkeypatch.setattr(reaper, "sweep", down)

    async def two_passes():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reaper.housekeeping(None, None, Settings(housekeeping_interval_s=0.05)), 0.3)

    with caplog.at_level(logging.WARNING, logger=reaper.log.name):
        asyncio.run(two_passes())
    said = [r for r in caplog.records if r.name == reaper.log.name]
    assert len(said) >= 2 and all(r.levelno == logging.WARNING and r.exc_info is None for r in said)
    assert "the artifact store did not answer" in said[0].getMessage()


def test_an_abort_the_artifact_store_misses_is_one_warning_line(caplog):
    """A dropped upload whose multipart abort S3 did not answer logged an ERROR with a
    40-line traceback of obstore's; it is one line saying the housekeeping will abort it."""
    import logging

    from pruning_core.objectstore import StoreUnavailable
    from pruning_server import service

    class Writer:
        def discard(self):
            raise StoreUnavailable("Generic S3 error: Error performing DELETE ... Connection refused")

    class Broken:
        def discard(self):
            raise RuntimeError("a bug")

    with caplog.at_level(logging.WARNING, logger=service.log.name):
        service._drop(None, Writer())
        service._drop(None, Broken())  # anything else keeps its traceback
    said = [r for r in caplog.records if r.name == service.log.name]
    assert [r.levelno for r in said] == [logging.WARNING, logging.ERROR]
    assert said[0].exc_info is None and "PRUNING_S3_ABORT_UPLOADS_AFTER_S" in said[0].getMessage()
    assert said[1].exc_info is not None


def test_a_store_that_will_not_list_multipart_uploads_does_not_stop_the_retention_pass(
    redis_url, stores, tmp_path, monkeypatch, caplog
):
    """Credentials without s3:ListBucketMultipartUploads (or a store without the call) failed
    every housekeeping pass before its blobs and checkpoints were judged."""
    import logging

    from pruning_core.objectstore import LocalStore, StoreRefused
    from pruning_core.settings import Settings
    from pruning_server import reaper

    _, prefix = stores

    def refused(self, min_age_s):
        raise StoreRefused("listing or aborting multipart uploads: An error occurred (AccessDenied)")

    monkeypatch.setattr(LocalStore, "abort_stale_uploads", refused)
    settings = Settings(redis_url=redis_url, key_prefix=prefix, artifact_dir=tmp_path / "a")

    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            return await reaper.enforce_retention(store, LocalStore(tmp_path / "a"), settings)
        finally:
            await store.redis.aclose()

    with caplog.at_level(logging.WARNING, logger=reaper.log.name):
        counts = asyncio.run(run())
    assert counts["uploads"] == 0 and "checkpoints" in counts  # the pass went on to its end
    assert any("stale multipart uploads not aborted" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("key_prefix", ["", "pruning/"])
def test_only_the_stores_own_multipart_uploads_are_aborted(tmp_path, key_prefix):
    """With no prefix the bucket may be another application's too: its uploads are not ours."""
    from pruning_core.objectstore import S3Store

    store = S3Store(tmp_path, None)  # type: ignore[arg-type]
    store.key_prefix = key_prefix
    assert store._ours(key_prefix + "ab" * 32) and store._ours(key_prefix + "tmp/x1")
    assert store._ours(key_prefix + "checkpoints/job/epoch-1.index")
    assert not store._ours(key_prefix + "backups/db.tar") and not store._ours("elsewhere/" + "ab" * 32)


def test_a_worker_waiting_for_a_silent_store_stops_within_a_probe(tmp_path, monkeypatch):
    """A store that takes connections and never answers (a paused S3 server): one probe of
    wait_for_store gives up after STORE_PROBE_TIMEOUT_S, not after the transfers' patience
    (s3_timeout_s x (1 + s3_max_retries), here 4 minutes), so a worker asked to stop stops."""
    import socket

    from pruning_core.settings import Settings
    from pruning_worker import runner, shutdown

    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes connections; nobody reads
    try:
        settings = Settings(
            state_dir=tmp_path / "state",
            artifact_store="s3",
            s3_endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}",
            s3_bucket="artifacts",
            s3_access_key_id="key",
            s3_secret_access_key="secret",
            s3_timeout_s=60,
            s3_max_retries=3,
        )
        monkeypatch.setattr(runner, "STORE_PROBE_TIMEOUT_S", 1.0)
        monkeypatch.setattr(shutdown, "_stop_at", time.monotonic() + 60)
        started = time.monotonic()
        assert not runner.wait_for_store(settings, 600.0, every_s=0.05)
        assert time.monotonic() - started < 8
    finally:
        silent.close()
