"""The SweepService: sweeps whose trials are ordinary jobs, created through the job service's
own path (validation, the recipe, idempotency, the queue), so they spread over every worker.

What to try next is decided by ``pruning_core.sweeps``; the driver below applies it whenever a
trial changes. It runs in every server process and takes a short Redis lock per sweep, so
servers stay stateless and a sweep goes on when one of them stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.rpc import code_pb2

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_core import plan, sweeps, validation
from pruning_core.phases import Phase
from pruning_core.store import ACTIVE, STORE_ERRORS, TERMINAL, JobNotFound, make_event, new_job_id, state_event
from pruning_core.sweeps import SweepNotFound, SweepStore

from .errors import Exhausted, Failure, Invalid
from .service import PruningService

log = logging.getLogger(__name__)
_SWEEP_ID = re.compile(r"[0-9a-f]{24}")
WATCH_POLL_S = 0.3
LOCK_MS = 30_000
TRIAL_LABELS = ("sweep", "trial")


class _Poll:
    def __init__(self) -> None:
        self.latest: pb.Sweep | None = None
        self.error: BaseException | None = None
        self.watchers = 0
        self.changed = asyncio.Condition()


class SweepWatches:
    """One reader per watched sweep, however many streams follow it: it reads the sweep every
    ``interval_s`` while anyone watches, until the sweep ends, and each stream takes the
    versions newer than it has seen (a tenant's hundred watches of one sweep cost one read per
    interval, not a hundred)."""

    def __init__(self, read: Callable[[str, str], Awaitable[pb.Sweep]], interval_s: float = WATCH_POLL_S):
        self._read, self.interval_s = read, interval_s
        self._polls: dict[tuple[str, str], _Poll] = {}

    async def follow(self, tenant: str, sweep_id: str, after_version: int) -> AsyncIterator[pb.Sweep]:
        key = (tenant, sweep_id)
        poll = self._polls.get(key)
        if poll is None:
            poll = self._polls[key] = _Poll()
            asyncio.get_running_loop().create_task(self._run(key, poll), name=f"watch-sweep-{sweep_id}")
        poll.watchers += 1
        seen = after_version

        def ready() -> bool:
            return poll.error is not None or _news(poll.latest, seen)

        try:
            while True:
                async with poll.changed:
                    await poll.changed.wait_for(ready)
                    sweep, error = poll.latest, poll.error
                if error is not None:
                    raise error
                assert sweep is not None
                if sweep.version > seen:
                    seen = sweep.version
                    yield sweep
                if sweep.state in TERMINAL:
                    return
        finally:
            poll.watchers -= 1

    async def _run(self, key: tuple[str, str], poll: _Poll) -> None:
        try:
            while poll.watchers:
                try:
                    sweep = await self._read(*key)
                except Exception as exc:  # noqa: BLE001 - each watcher raises it (NOT_FOUND once deleted, an outage)
                    async with poll.changed:
                        poll.error = exc
                        poll.changed.notify_all()
                    return
                async with poll.changed:
                    poll.latest = sweep
                    poll.changed.notify_all()
                if sweep.state in TERMINAL:
                    return
                await asyncio.sleep(self.interval_s)
        finally:
            if self._polls.get(key) is poll:
                del self._polls[key]


def _news(sweep: pb.Sweep | None, seen: int) -> bool:
    return sweep is not None and (sweep.version > seen or sweep.state in TERMINAL)


class SweepServicer(pb_grpc.SweepServiceServicer):
    def __init__(self, jobs: PruningService, store: SweepStore):
        self.jobs, self.store = jobs, store
        jobs.searches = self  # CreateJob and CancelJob of a job with a budget come here
        self.watches = SweepWatches(self._sweep)
        # per tenant: this process's creations waiting for the tenant's creation lock queue here,
        # so one of them at a time asks Redis for it (a burst of a thousand did it 50 times a
        # second each, slowing every tenant's calls); dropped when its last user is done
        self._local_creations: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def _sweep(self, tenant: str, sweep_id: str) -> pb.Sweep:
        if not _SWEEP_ID.fullmatch(sweep_id):
            raise Invalid([("sweep_id", f"not a sweep id: {sweep_id[:64]!r}")])
        try:
            return await self.store.get(tenant, sweep_id)
        except SweepNotFound:
            raise Failure(grpc.StatusCode.NOT_FOUND, f"no sweep {sweep_id}") from None

    async def _check_template(self, tenant: str, spec: pb.SweepSpec, prefix: str) -> pb.Job:
        """The template on its model and dataset, exactly as its first trial will be checked;
        the answer of CreateJob with validate_only for that trial."""
        first = (sorted(spec.sparsities) or [spec.search_high])[0]
        try:
            checked = await self.jobs.create_job(
                tenant, pb.CreateJobRequest(spec=sweeps.trial_spec(spec.base, first), validate_only=True)
            )
            if spec.method == pb.SEARCH_METHOD_SUCCESSIVE_HALVING:
                # Rung 0 trains fewer epochs than the template: a schedule's explicit steps
                # (end_step, begin_step) that fit the template may not fit it.
                short = sweeps.trial_spec(spec.base, first, sweeps.rung_epochs(spec, 0))
                await self.jobs.create_job(tenant, pb.CreateJobRequest(spec=short, validate_only=True))
        except Invalid as exc:
            raise Invalid([(f"{prefix}{f.removeprefix('spec')}", d) for f, d in exc.violations]) from None
        except Failure as exc:  # NOT_FOUND "spec.model_id: no artifact ..." names the field too
            if not exc.message.startswith("spec."):
                raise
            raise Failure(exc.code, f"{prefix}{exc.message.removeprefix('spec')}") from None
        if spec.budget.WhichOneof("limit") is not None:  # the trials' specs have no budget: asked here
            model = await self.jobs._artifact(tenant, spec.base.model_id, f"{prefix}.model_id")
            if problem := plan.budget_problem(spec.base.training, model.info):
                raise Invalid([(f"{prefix}.training.output_losses", problem)])
        return checked

    async def _start(self, tenant: str, sweep: pb.Sweep, idempotency_key: str, fingerprint: str) -> pb.Sweep:
        sweep.created_at.GetCurrentTime()
        try:
            sweep, created = await self.store.create(
                tenant, sweep, idempotency_key, fingerprint, self.jobs.settings.queue
            )
        except ValueError as exc:
            raise Failure(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        if created:
            log.info("sweep %s created for %s", sweep.id, tenant)
            if await self.store.lock(sweep.id, LOCK_MS):  # else a driver is at it already
                try:
                    sweep = await advance(self.jobs, self.store, sweep.id)
                finally:
                    await self.store.unlock(sweep.id)
        return sweep

    async def CreateSweep(self, request: pb.CreateSweepRequest, context) -> pb.Sweep:
        tenant = await self.jobs._tenant(context)
        violations = sweeps.validate(request.spec)
        # Trials carry the sweep's labels and two of their own ("sweep", "trial").
        violations += validation.validate_metadata(
            request.labels, request.idempotency_key, validation.MAX_LABELS - len(TRIAL_LABELS)
        )
        if violations:
            raise Invalid(violations)
        # One CreateSweep of a tenant at a time: its first trials are queued before the next
        # one counts the tenant's active jobs, so a burst cannot pass the bound together.
        async with self._creating(tenant):
            if not await self.store.knows_idempotency_key(tenant, request.idempotency_key):
                await self.jobs.check_active_jobs(tenant)  # a retry returns the sweep it made
            spec = sweeps.with_defaults(request.spec)
            await self._check_template(tenant, spec, "spec.base")
            sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_QUEUED, spec=spec, labels=request.labels)
            fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
            return await self._start(tenant, sweep, request.idempotency_key, fingerprint)

    @contextlib.asynccontextmanager
    async def _creating(self, tenant: str, wait_s: float = 10.0) -> AsyncIterator[None]:
        """Holds the tenant's sweep-creation lock (a Redis key, so across server processes);
        RESOURCE_EXHAUSTED when another creation holds it past ``wait_s``."""
        key, token = f"{self.store.prefix}:sweep-create:{tenant}", new_job_id()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        busy = Exhausted("another sweep of this tenant is being created", self.jobs.settings.retry_after_s)
        local, users = self._local_creations.setdefault(tenant, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            try:
                # not asyncio.wait_for: on Python 3.11 it returns the lock to a task cancelled as
                # the lock came to it, swallowing the cancellation (CPython gh-86296)
                async with asyncio.timeout_at(deadline):
                    await local.acquire()
            except TimeoutError:
                raise busy from None
            try:
                while not await self.store.redis.set(key, token, nx=True, px=LOCK_MS):  # other processes
                    if loop.time() > deadline:
                        raise busy
                    await asyncio.sleep(0.02)
                try:
                    yield
                finally:
                    if await self.store.redis.get(key) == token.encode():
                        await self.store.redis.delete(key)
            finally:
                local.release()
        finally:
            users[0] -= 1
            if not users[0]:
                del self._local_creations[tenant]

    # -- jobs with a budget (JobSpec.budget) -------------------------------------------------

    async def create_search(self, tenant: str, request: pb.CreateJobRequest) -> pb.Job:
        """CreateJob for a job with a budget: the job's record (no worker runs it) and the sweep
        that searches for its sparsity; the driver ends the job with the sweep."""
        violations = validation.validate_metadata(
            request.labels, request.idempotency_key, validation.MAX_LABELS - len(TRIAL_LABELS)
        )
        if violations:
            raise Invalid(violations)
        job_spec = validation.with_defaults(request.spec)
        spec = sweeps.search_for(job_spec)
        checked = await self._check_template(tenant, spec, "spec")
        if request.validate_only:
            checked.spec.budget.CopyFrom(request.spec.budget)
            checked.plan.spec.budget.CopyFrom(request.spec.budget)
            # The plan is one trial's (at the top of the range): say what the search runs
            checked.plan.estimate_basis += (
                f"; one trial of the search for the budget, which runs up to {spec.max_trials} "
                f"trial{'s' if spec.max_trials != 1 else ''} ({min(spec.parallel_trials, spec.max_trials)} at a time) "
                f"over sparsities {spec.search_low:g} to {spec.search_high:g}"
            )
            return checked
        job = pb.Job(id=new_job_id(), spec=job_spec, labels=request.labels, search_sweep_id=sweeps.new_sweep_id())
        job, created = await self.jobs.record(tenant, job, request)
        if job.state in TERMINAL:
            return job  # a retry of a job cancelled before its search started: none starts now
        await self.jobs.store.mark_enqueued(job.id)  # the sweep runs it, never a worker
        sweep = pb.Sweep(
            id=job.search_sweep_id, state=pb.JOB_STATE_QUEUED, spec=spec, labels=request.labels, job_id=job.id
        )
        # Keyed by the job: a retry of CreateJob (or a crash between the two writes) starts
        # no second search.
        if (current := await self.jobs.store.get(tenant, job.id)).state in TERMINAL:
            return current  # cancelled meanwhile: no search to start
        await self._start(tenant, sweep, f"search-for-job-{job.id}", job.id)
        if (await self.jobs.store.get(tenant, job.id)).state == pb.JOB_STATE_CANCELLED:
            # Cancelled while its search was being created (cancel_search found none yet).
            with contextlib.suppress(Failure):
                await self._cancel(tenant, sweep.id)
        log.info(
            "job %s %s for %s: searching by sweep %s",
            job.id,
            "created" if created else "returned again",
            tenant,
            sweep.id,
        )
        return await self.jobs.store.get(tenant, job.id)

    async def cancel_search(self, tenant: str, job: pb.Job) -> pb.Job:
        try:
            await self.store.get(tenant, job.search_sweep_id)
        except SweepNotFound:
            # CreateJob recorded the job and has not created its search yet: the job ends now.
            # Each side writes first and reads the other's after, so one of them sees both: if
            # the search appeared meanwhile it is cancelled here, else create_search sees the
            # cancelled job and cancels the search it made.
            job = await self.jobs.store.update(tenant, job.id, _cancel_before_search)
            with contextlib.suppress(Failure):  # NOT_FOUND: create_search cancels it
                await self._cancel(tenant, job.search_sweep_id)
            return job
        with contextlib.suppress(Failure):  # already ended: the job follows it below
            await self._cancel(tenant, job.search_sweep_id)
        with contextlib.suppress(SweepNotFound):
            await settle(self.jobs, tenant, await self.store.get(tenant, job.search_sweep_id))
        return await self.jobs.store.get(tenant, job.id)

    async def GetSweep(self, request: pb.GetSweepRequest, context) -> pb.Sweep:
        return await self._sweep(await self.jobs._tenant(context), request.sweep_id)

    async def ListSweeps(self, request: pb.ListSweepsRequest, context) -> pb.ListSweepsResponse:
        tenant = await self.jobs._tenant(context)
        if not 0 <= request.page_size <= 500:
            raise Invalid([("page_size", f"must be in [0, 500], got {request.page_size}")])
        if request.state not in pb.JobState.values():
            raise Invalid([("state", f"unknown state {request.state}")])
        try:
            sweeps.parse_page_token(request.page_token)
        except ValueError as exc:
            raise Invalid([("page_token", str(exc))]) from None
        found, token = await self.store.list(tenant, request.page_size or 50, request.page_token, request.state)
        return pb.ListSweepsResponse(sweeps=found, next_page_token=token)

    async def WatchSweep(self, request: pb.WatchSweepRequest, context):
        tenant = await self.jobs._tenant(context)
        sweep_id = (await self._sweep(tenant, request.sweep_id)).id  # INVALID_ARGUMENT, NOT_FOUND
        # A sweep's watch takes one of the same slots as a job's (PRUNING_MAX_WATCHES...).
        async with self.jobs._slot(self.jobs.watches, tenant):
            async for sweep in self.watches.follow(tenant, sweep_id, request.after_version):
                yield sweep

    async def CancelSweep(self, request: pb.CancelSweepRequest, context) -> pb.Sweep:
        tenant = await self.jobs._tenant(context)
        sweep = await self._cancel(tenant, request.sweep_id)
        if sweep.job_id:
            await settle(self.jobs, tenant, sweep)
        return sweep

    async def _cancel(self, tenant: str, sweep_id: str) -> pb.Sweep:
        sweep = await self._sweep(tenant, sweep_id)
        if sweep.state in TERMINAL and sweep.state != pb.JOB_STATE_CANCELLED:
            raise Failure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"sweep {sweep.id} already ended {pb.JobState.Name(sweep.state).removeprefix('JOB_STATE_')}",
            )
        # Ended first, so the driver queues nothing more; then every trial still going. The
        # driver refreshes the sweep until those trials' jobs have ended too. Cancelling twice
        # answers the record, and cancels again what a first call cut short left going.
        if sweep.state != pb.JOB_STATE_CANCELLED:
            sweep = await self.store.update(tenant, sweep.id, _end_as_cancelled)
        for trial in sweep.trials:
            if trial.state not in TERMINAL:
                with contextlib.suppress(Failure):
                    await self.jobs.cancel_job(tenant, trial.job_id)
        return await refresh(self.jobs, self.store, sweep.id)


def _cancel_before_search(job: pb.Job) -> list[pb.JobEvent]:
    if job.state in TERMINAL:
        return []
    error = pb.JobError(code=code_pb2.CANCELLED, message="cancelled while its search was being set up")
    return [state_event(job, pb.JOB_STATE_CANCELLED, error)]


def _end_as_cancelled(sweep: pb.Sweep) -> bool:
    if sweep.state in TERMINAL:
        return False
    sweep.state = pb.JOB_STATE_CANCELLED
    sweep.message = "cancelled"
    sweep.finished_at.GetCurrentTime()
    return True


async def _jobs_of(jobs: PruningService, tenant: str, sweep: pb.Sweep) -> dict[str, pb.Job]:
    found = {}
    for trial in sweep.trials:
        if trial.job_id and trial.state not in TERMINAL:
            with contextlib.suppress(JobNotFound):
                found[trial.job_id] = await jobs.store.get(tenant, trial.job_id)
    return found


async def _trial_bound(jobs: PruningService, tenant: str, sweep: pb.Sweep) -> tuple[int, int | None]:
    """The bound on the tenant's active jobs that the sweep's trials are created under (0: no
    cap), and how many trials fit under it now (None: any). Trials count against the tenant's
    ``max_active_jobs_per_tenant`` like any job; the job a search runs for, which no worker
    runs, does not (the bound is one more while it is active). The bound is checked again in
    the script that writes each trial's record, so sweeps advanced side by side cannot pass it
    together; a sweep without room waits for a later step."""
    cap = jobs.settings.max_active_jobs_per_tenant
    if not cap:
        return 0, None
    if sweep.job_id:
        with contextlib.suppress(JobNotFound):
            if (await jobs.store.get(tenant, sweep.job_id)).state in ACTIVE:
                cap += 1
    return cap, max(0, cap - await jobs.store.active_jobs(tenant))


async def refresh(jobs: PruningService, store: SweepStore, sweep_id: str, tenant: str | None = None) -> pb.Sweep:
    """Brings the trials' states and results up to date (nothing more)."""
    tenant = tenant or await store.tenant_of(sweep_id)
    current = await _jobs_of(jobs, tenant, await store.get(tenant, sweep_id))

    def apply(sweep: pb.Sweep) -> bool:
        before = sweep.SerializeToString()
        for trial in sweep.trials:
            if trial.job_id in current:
                sweeps.record_job(trial, current[trial.job_id], sweep.spec.budget)
        return sweep.SerializeToString() != before

    return await store.update(tenant, sweep_id, apply)


async def advance(jobs: PruningService, store: SweepStore, sweep_id: str) -> pb.Sweep:
    """One step of a sweep: record what its trials did, queue the next ones, end it when the
    answer is known. Safe to run twice (trial jobs are created with idempotency keys)."""
    tenant = await store.tenant_of(sweep_id)
    sweep = await refresh(jobs, store, sweep_id, tenant)
    if sweep.state in TERMINAL:
        return sweep
    if dropped := sweeps.superfluous(sweep):
        reason = f"cancelled: a lower sparsity of the sweep went over the budget ({sweeps.lowest_over(sweep):.4f})"
        for trial in dropped:
            with contextlib.suppress(Failure):
                await jobs.cancel_job(tenant, trial.job_id, reason=reason)
        log.info("sweep %s: cancelled %d trial(s) above a sparsity over the budget", sweep.id, len(dropped))
        sweep = await refresh(jobs, store, sweep_id, tenant)
    queue = sweeps.next_trials(sweep)
    bound, room = await _trial_bound(jobs, tenant, sweep) if queue else (0, None)
    for trial in queue[:room]:
        index = trial.index = len(sweep.trials)
        spec = sweeps.trial_spec(sweep.spec.base, trial.sparsity, trial.epochs)  # epochs: a rung's
        request = pb.CreateJobRequest(
            spec=spec,
            labels={**sweep.labels, TRIAL_LABELS[0]: sweep.id, TRIAL_LABELS[1]: str(index)},
            idempotency_key=f"sweep-{sweep.id}-trial-{index}",
        )
        try:
            job = await jobs.create_job(tenant, request, sweep_id=sweep.id, max_active=bound)
            trial.job_id = job.id
        except Exhausted:
            break  # another sweep of the tenant took the room meanwhile: a later step queues it
        except Failure as exc:  # a trial refused does not sink the sweep
            trial.state = pb.JOB_STATE_FAILED
            trial.error.code = exc.code.value[0]  # google.rpc codes are gRPC's
            trial.error.message = exc.message[:500]

        def add(current: pb.Sweep, trial: pb.Trial = trial) -> bool:
            if current.state in TERMINAL or len(current.trials) != trial.index:
                return False
            current.trials.append(trial)
            current.state = pb.JOB_STATE_RUNNING
            return True

        sweep = await store.update(tenant, sweep_id, add)
        if sweep.state in TERMINAL:  # cancelled meanwhile: its job is no trial, so it goes too
            if trial.job_id and trial.job_id not in {t.job_id for t in sweep.trials}:
                with contextlib.suppress(Failure):
                    await jobs.cancel_job(tenant, trial.job_id)
            break

    def conclude(current: pb.Sweep) -> bool:
        if current.state in TERMINAL or not sweeps.is_done(current):
            return False
        index = sweeps.chosen(current)
        if index is not None:
            current.chosen_trial = index
            current.chosen_job_id = current.trials[index].job_id
        current.message = sweeps.conclusion(current)
        # A sweep none of whose trials succeeded found nothing: it fails (a broken model or
        # dataset, a spec no trial could run), where a trial that fails among others is only
        # over the budget.
        failed = sweeps.first_failure(current) is not None
        current.state = pb.JOB_STATE_FAILED if failed else pb.JOB_STATE_SUCCEEDED
        current.finished_at.GetCurrentTime()
        return True

    sweep = await store.update(tenant, sweep_id, conclude)
    if sweep.state in TERMINAL:
        log.info("sweep %s ended: %s", sweep.id, sweep.message)
    if sweep.job_id:
        await settle(jobs, tenant, sweep)
    return sweep


def _told(trial: pb.Trial, sweep: pb.Sweep) -> str:
    head = f"search trial {trial.index} at sparsity {trial.sparsity:.4f}"
    if trial.state != pb.JOB_STATE_SUCCEEDED:
        return f"{head} {pb.JobState.Name(trial.state).removeprefix('JOB_STATE_')}: {trial.error.message}"
    verdict = "within the budget" if trial.within_budget else "over the budget"
    if not trial.HasField("accuracy_loss_pp"):
        return f"{head}: no accuracy to compare (test loss {trial.pruned_loss:.4f}), {verdict}"
    return f"{head}: accuracy {trial.pruned_accuracy:.4f} ({sweeps.lost_or_gained(trial.accuracy_loss_pp)}), {verdict}"


async def settle(jobs: PruningService, tenant: str, sweep: pb.Sweep) -> None:
    """The job a search sweep runs for follows it: RUNNING once trials run, a log line per
    trial that ended, and at the sweep's end the result and artifacts of the trial picked
    (SUCCEEDED), FAILED when no trial kept the budget or none succeeded, CANCELLED with the
    sweep."""
    picked = None
    if sweep.state == pb.JOB_STATE_SUCCEEDED and sweep.chosen_job_id:
        with contextlib.suppress(JobNotFound):
            picked = await jobs.store.get(tenant, sweep.chosen_job_id)

    def follow(job: pb.Job) -> list[pb.JobEvent]:
        if job.state in TERMINAL:
            return []
        events = []
        if job.state == pb.JOB_STATE_QUEUED and sweep.state != pb.JOB_STATE_QUEUED:
            events.append(state_event(job, pb.JOB_STATE_RUNNING))
        # Progress counts the trials ended (the job's progress.step says how many were told).
        ended = sorted(
            (t for t in sweep.trials if t.state in TERMINAL),
            key=lambda t: (t.finished_at.ToNanoseconds(), t.index),
        )
        for trial in ended[job.progress.step :]:
            events.append(make_event(job.id, log=pb.LogLine(level="INFO", message=_told(trial, sweep))))
        if len(ended) != job.progress.step:
            best = sweeps.chosen(sweep)
            job.progress.CopyFrom(
                pb.Progress(
                    phase=Phase.SEARCH,
                    step=len(ended),
                    total_steps=sweep.spec.max_trials,
                    sparsity=sweep.trials[best].sparsity if best is not None else 0.0,
                    accuracy=sweep.trials[best].pruned_accuracy if best is not None else None,
                )
            )
            events.append(make_event(job.id, progress=job.progress))
        if sweep.state == pb.JOB_STATE_CANCELLED:
            error = pb.JobError(code=code_pb2.CANCELLED, message="cancelled: the search stopped")
            events.append(state_event(job, pb.JOB_STATE_CANCELLED, error))
        elif sweep.state == pb.JOB_STATE_SUCCEEDED and picked is not None and picked.state == pb.JOB_STATE_SUCCEEDED:
            job.result.CopyFrom(picked.result)
            # The spec says what ran: the picked trial's (its sparsity, the steps as resolved),
            # with the budget it was picked by.
            budget = pb.AccuracyBudget()
            budget.CopyFrom(job.spec.budget)
            job.spec.CopyFrom(picked.spec)
            job.spec.budget.CopyFrom(budget)
            events.append(make_event(job.id, result=picked.result))
            events.append(state_event(job, pb.JOB_STATE_SUCCEEDED))
        elif sweep.state in TERMINAL:
            # no trial kept the budget, or none ran at all: then the trials' own code (the
            # model is broken: INVALID_ARGUMENT)
            first = sweeps.first_failure(sweep)
            code = first.error.code if first is not None and first.error.code else code_pb2.FAILED_PRECONDITION
            events.append(state_event(job, pb.JOB_STATE_FAILED, pb.JobError(code=code, message=sweep.message)))
        return events

    with contextlib.suppress(JobNotFound):
        await jobs.store.update(tenant, sweep.job_id, follow)


async def drive(jobs: PruningService, store: SweepStore, interval_s: float) -> None:
    """Advances every active sweep every ``interval_s``, one server at a time per sweep."""
    while True:
        try:
            for sweep_id in await store.active():
                # Trials go to the queue of the server that created the sweep: a server set up
                # for another queue (sharing the key prefix) leaves the sweep alone.
                if await store.queue_of(sweep_id) not in ("", jobs.settings.queue):
                    continue
                if not await store.lock(sweep_id, LOCK_MS):
                    continue
                try:
                    await advance(jobs, store, sweep_id)
                except SweepNotFound:
                    await store.redis.srem(store.active_key, sweep_id)
                finally:
                    await store.unlock(sweep_id)
        except asyncio.CancelledError:
            raise
        except STORE_ERRORS as exc:  # an outage: one line a step, not a traceback a second
            log.warning("sweep driver: the job store did not answer (%s); retrying", exc)
        except Exception:
            log.warning("sweep driver: step failed; retrying", exc_info=True)
        await asyncio.sleep(interval_s)
