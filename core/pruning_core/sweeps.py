"""Sweeps: what to try next and when to stop (pure functions over a ``Sweep``), and the Redis
records of sweeps. Trials are ordinary jobs; a sweep only says which sparsities to queue.

A list of sparsities is tried lowest first, ``parallel_trials`` at a time; with a budget, the
sparsities above the lowest one over it are skipped (accuracy falls with sparsity), so the
sweep stops once its answer is known. Without a list it searches: the ends of the range first,
then ``parallel_trials`` points evenly inside the interval between the highest sparsity within
the budget and the lowest one over it, round after round, until that interval is narrower than
the tolerance or ``max_trials`` ran. A failed trial counts as over the budget and never sinks
the sweep.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from pruning.v1 import pruning_pb2 as pb

from . import validation
from .store import IDEMPOTENCY_TTL_S, TERMINAL, new_job_id

__all__ = [
    "SweepNotFound",
    "SweepStore",
    "chosen",
    "is_done",
    "next_sparsities",
    "search_for",
    "trial_spec",
    "validate",
    "with_defaults",
    "within_budget",
]

SEARCH_LOW, SEARCH_HIGH, TOLERANCE = 0.5, 0.95, 0.02
MAX_TRIALS, PARALLEL_TRIALS = 8, 2
LIMIT_TRIALS, LIMIT_PARALLEL, LIMIT_SPARSITIES = 100, 32, 100
Violation = tuple[str, str]


def _ended(trial: pb.Trial) -> bool:
    return trial.state in TERMINAL


def validate(spec: pb.SweepSpec) -> list[Violation]:
    """Every problem of a sweep spec, the template's own problems under ``spec.base``."""
    out = [(f"spec.base{field.removeprefix('spec')}", text) for field, text in validation.validate(spec.base)]
    if not spec.base.pruning.HasField("schedule"):
        out.append(("spec.base.pruning.schedule", "a sweep varies the schedule's sparsity: give one"))
    if spec.base.pruning.HasField("sparsity_m_by_n"):
        out.append(("spec.base.pruning.sparsity_m_by_n", "fixes the sparsity, so there is nothing to sweep"))
    if len(spec.sparsities) > LIMIT_SPARSITIES:
        out.append(("spec.sparsities", f"at most {LIMIT_SPARSITIES}, got {len(spec.sparsities)}"))
    for i, s in enumerate(spec.sparsities[:LIMIT_SPARSITIES]):
        if not 0 <= s < 1:
            out.append((f"spec.sparsities[{i}]", f"must be in [0, 1), got {s}"))
    if len({round(s, 4) for s in spec.sparsities}) != len(spec.sparsities):
        out.append(("spec.sparsities", "lists a sparsity twice"))
    if validation.has_budget(spec.base):
        out.append(("spec.base.budget", "a trial template has no budget of its own: set spec.budget"))
    validation.validate_budget(spec.budget, "spec.budget", out)
    which = spec.budget.WhichOneof("limit")
    if not spec.sparsities and which is None:
        out.append(("spec.sparsities", "give the sparsities to try, or a budget to search for"))
    low, high = spec.search_low or SEARCH_LOW, spec.search_high or SEARCH_HIGH
    if not (0 <= low < high < 1):
        out.append(("spec.search_low", f"needs 0 <= search_low < search_high < 1, got {low} and {high}"))
    if not (math.isfinite(spec.tolerance) and spec.tolerance >= 0):
        out.append(("spec.tolerance", f"must be a finite number >= 0 (0 = {TOLERANCE}), got {spec.tolerance}"))
    if not 0 <= spec.max_trials <= LIMIT_TRIALS:
        out.append(("spec.max_trials", f"must be in [1, {LIMIT_TRIALS}] (0 = the default), got {spec.max_trials}"))
    if not 0 <= spec.parallel_trials <= LIMIT_PARALLEL:
        out.append(
            ("spec.parallel_trials", f"must be in [1, {LIMIT_PARALLEL}] (0 = the default), got {spec.parallel_trials}")
        )
    return out


def with_defaults(spec: pb.SweepSpec) -> pb.SweepSpec:
    out = pb.SweepSpec()
    out.CopyFrom(spec)
    out.search_low = out.search_low or SEARCH_LOW
    out.search_high = out.search_high or SEARCH_HIGH
    out.tolerance = out.tolerance or TOLERANCE
    out.max_trials = out.max_trials or (len(out.sparsities) if out.sparsities else MAX_TRIALS)
    out.parallel_trials = out.parallel_trials or PARALLEL_TRIALS
    return out


def trial_spec(base: pb.JobSpec, sparsity: float) -> pb.JobSpec:
    """The template with its final (or constant) sparsity set to ``sparsity``; the recipe's
    per-layer split is made again for it at CreateJob."""
    spec = pb.JobSpec()
    spec.CopyFrom(base)
    spec.ClearField("budget")  # a trial prunes to its sparsity: it searches for nothing
    schedule = spec.pruning.schedule
    if schedule.HasField("constant_sparsity"):
        schedule.constant_sparsity.target_sparsity = sparsity
    else:
        decay = schedule.polynomial_decay
        decay.initial_sparsity = min(decay.initial_sparsity, sparsity)
        decay.final_sparsity = sparsity
    spec.pruning.ClearField("layer_sparsity")
    return spec


def search_for(spec: pb.JobSpec) -> pb.SweepSpec:
    """The search sweep of a job with a budget (JobSpec.budget), the sweep defaults else."""
    base = pb.JobSpec()
    base.CopyFrom(spec)
    base.ClearField("budget")
    return with_defaults(pb.SweepSpec(base=base, budget=spec.budget))


def within_budget(trial: pb.Trial, budget: pb.AccuracyBudget) -> bool:
    if trial.state != pb.JOB_STATE_SUCCEEDED:
        return False
    which = budget.WhichOneof("limit")
    if which == "max_loss_pp":
        return trial.accuracy_loss_pp <= budget.max_loss_pp + 1e-9
    if which == "max_relative_loss_percent":
        base = trial.baseline_accuracy
        return base > 0 and 100 * (base - trial.pruned_accuracy) / base <= budget.max_relative_loss_percent + 1e-9
    return True


def _has_budget(spec: pb.SweepSpec) -> bool:
    return spec.budget.WhichOneof("limit") is not None


def _tried(sweep: pb.Sweep) -> set[float]:
    return {round(t.sparsity, 4) for t in sweep.trials}


def _grid_next(sweep: pb.Sweep) -> list[float]:
    spec = sweep.spec
    pending = sorted(s for s in {round(s, 4) for s in spec.sparsities} if s not in _tried(sweep))
    if _has_budget(spec):
        over = [t.sparsity for t in sweep.trials if _ended(t) and not t.within_budget]
        if over:
            pending = [s for s in pending if s < min(over)]
    return pending


def _search_next(sweep: pb.Sweep) -> list[float]:
    spec = sweep.spec
    if any(not _ended(t) for t in sweep.trials):
        return []  # a round at a time: the next points depend on all of this round's
    low, high = round(spec.search_low, 4), round(spec.search_high, 4)
    ok = [t.sparsity for t in sweep.trials if t.within_budget]
    over = [t.sparsity for t in sweep.trials if not t.within_budget]
    if high in ok or low in over:
        return []  # the whole range keeps the budget, or none of it does
    a = max(ok) if ok else low
    above = [s for s in over if s > a]
    b = min(above) if above else high
    points = [s for s in (high, low) if s not in _tried(sweep)]
    if not points and b - a > spec.tolerance:
        n = spec.parallel_trials
        points = [round(a + (b - a) * k / (n + 1), 4) for k in range(1, n + 1)]
    return [s for s in dict.fromkeys(points) if s not in _tried(sweep)]


def next_sparsities(sweep: pb.Sweep) -> list[float]:
    """The sparsities to queue now (within ``parallel_trials`` and ``max_trials``)."""
    spec = sweep.spec
    running = sum(1 for t in sweep.trials if not _ended(t))
    room = min(spec.parallel_trials - running, spec.max_trials - len(sweep.trials))
    if room <= 0:
        return []
    wanted = _grid_next(sweep) if spec.sparsities else _search_next(sweep)
    return wanted[:room]


def is_done(sweep: pb.Sweep) -> bool:
    if any(not _ended(t) for t in sweep.trials):
        return False
    if len(sweep.trials) >= sweep.spec.max_trials:
        return True
    return not (_grid_next(sweep) if sweep.spec.sparsities else _search_next(sweep))


def chosen(sweep: pb.Sweep) -> int | None:
    """Index of the trial with the highest sparsity within the budget (None without one)."""
    if not _has_budget(sweep.spec):
        return None
    kept = [t for t in sweep.trials if t.within_budget]
    return max(kept, key=lambda t: t.sparsity).index if kept else None


def conclusion(sweep: pb.Sweep) -> str:
    index = chosen(sweep)
    done = sum(1 for t in sweep.trials if t.state == pb.JOB_STATE_SUCCEEDED)
    failed = sum(1 for t in sweep.trials if t.state == pb.JOB_STATE_FAILED)
    tail = f" ({done} trials succeeded, {failed} failed)"
    if not _has_budget(sweep.spec):
        return "every sparsity tried" + tail
    if index is None:
        return "no sparsity tried keeps the accuracy budget" + tail
    t = sweep.trials[index]
    return (
        f"sparsity {t.sparsity:.4f} is the highest within the budget: accuracy {t.pruned_accuracy:.4f}, "
        f"{t.accuracy_loss_pp:+.2f} pp lost" + tail
    )


def record_job(trial: pb.Trial, job: pb.Job, budget: pb.AccuracyBudget) -> None:
    """Copies a trial job's state and result into the trial."""
    trial.state = job.state
    trial.worker = job.worker
    if job.HasField("started_at"):
        trial.started_at.CopyFrom(job.started_at)
    if job.HasField("finished_at"):
        trial.finished_at.CopyFrom(job.finished_at)
    if job.HasField("error"):
        trial.error.CopyFrom(job.error)
    if job.state == pb.JOB_STATE_SUCCEEDED:
        r = job.result
        trial.baseline_accuracy, trial.pruned_accuracy = r.baseline.accuracy, r.pruned.accuracy
        trial.accuracy_loss_pp = 100 * (r.baseline.accuracy - r.pruned.accuracy)
        trial.kernel_sparsity = r.pruned_kernel_sparsity
        trial.gzip_bytes, trial.compression_ratio = r.size_after.gzip_bytes, r.compression_ratio
        single = [x.after_ms for x in r.latency if x.runtime == "tflite" and x.batch_size == 1]
        trial.tflite_latency_ms = single[0] if single else 0.0
    trial.within_budget = within_budget(trial, budget)


class SweepNotFound(KeyError):
    pass


class SweepStore:
    """Sweep records in Redis (asyncio): the sweep as one protobuf under its key, changed by
    optimistic transactions (WATCH), a per-tenant index by creation time, and the set of sweeps
    still to drive."""

    def __init__(self, redis: Any, prefix: str):
        self.redis, self.prefix = redis, prefix

    def _key(self, sweep_id: str) -> str:
        return f"{self.prefix}:sweep:{sweep_id}"

    def _tenant_index(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:sweeps"

    @property
    def active_key(self) -> str:
        return f"{self.prefix}:sweeps:active"

    async def create(
        self, tenant: str, sweep: pb.Sweep, idempotency_key: str, fingerprint: str, queue: str = ""
    ) -> tuple[pb.Sweep, bool]:
        """Stores a new sweep; with a known idempotency key returns that sweep instead."""
        if idempotency_key:
            idem = f"{self.prefix}:sweep-idem:{tenant}:{idempotency_key}"
            if not await self.redis.set(idem, f"{sweep.id} {fingerprint}", nx=True, ex=IDEMPOTENCY_TTL_S):
                existing = (await self.redis.get(idem)).decode().split(" ", 1)
                found = await self.get(tenant, existing[0])
                if existing[1] != fingerprint:
                    raise ValueError(f"idempotency_key was used for a different request (sweep {found.id})")
                return found, False
        sweep.version = 1
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._key(sweep.id), mapping={"tenant": tenant, "sweep": sweep.SerializeToString(), "queue": queue}
            )
            pipe.zadd(self._tenant_index(tenant), {sweep.id: time.time()})
            pipe.sadd(self.active_key, sweep.id)
            await pipe.execute()
        return sweep, True

    async def get(self, tenant: str | None, sweep_id: str) -> pb.Sweep:
        raw = await self.redis.hgetall(self._key(sweep_id))
        if not raw or (tenant is not None and raw[b"tenant"].decode() != tenant):
            raise SweepNotFound(sweep_id)
        return pb.Sweep.FromString(raw[b"sweep"])

    async def tenant_of(self, sweep_id: str) -> str:
        tenant = await self.redis.hget(self._key(sweep_id), "tenant")
        if tenant is None:
            raise SweepNotFound(sweep_id)
        return str(tenant.decode())

    async def update(
        self, tenant: str | None, sweep_id: str, mutate: Callable[[pb.Sweep], Awaitable[bool] | bool]
    ) -> pb.Sweep:
        """Applies ``mutate`` (True when it changed the sweep) atomically; retries on a race."""
        key = self._key(sweep_id)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    sweep = await self.get(tenant, sweep_id)
                    changed = mutate(sweep)
                    if not isinstance(changed, bool):
                        changed = await changed
                    if not changed:
                        await pipe.unwatch()
                        return sweep
                    sweep.version += 1
                    pipe.multi()
                    pipe.hset(key, "sweep", sweep.SerializeToString())
                    if sweep.state in TERMINAL:
                        pipe.srem(self.active_key, sweep_id)
                    await pipe.execute()
                    return sweep
                except redis.WatchError:
                    continue  # changed meanwhile: read it again

    async def queue_of(self, sweep_id: str) -> str:
        """The Celery queue the sweep's trials go to (the creating server's)."""
        queue = await self.redis.hget(self._key(sweep_id), "queue")
        return str(queue.decode()) if queue else ""

    async def active(self) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(self.active_key))

    async def lock(self, sweep_id: str, ttl_ms: int) -> bool:
        return bool(await self.redis.set(f"{self._key(sweep_id)}:lock", "1", nx=True, px=ttl_ms))

    async def unlock(self, sweep_id: str) -> None:
        await self.redis.delete(f"{self._key(sweep_id)}:lock")

    async def list(self, tenant: str, page_size: int, page_token: str, state: int) -> tuple[list[pb.Sweep], str]:
        """Newest first; the page token is the offset into the tenant's index."""
        start = int(page_token or 0)
        out: list[pb.Sweep] = []
        index = self._tenant_index(tenant)
        while len(out) < page_size:
            ids = await self.redis.zrevrange(index, start, start + page_size - 1)
            if not ids:
                return out, ""
            for i, raw_id in enumerate(ids):
                try:
                    sweep = await self.get(tenant, raw_id.decode())
                except SweepNotFound:
                    continue
                if not state or sweep.state == state:
                    out.append(sweep)
                    if len(out) == page_size:
                        return out, str(start + i + 1)
            start += len(ids)
        return out, str(start)


def new_sweep_id() -> str:
    return new_job_id()
