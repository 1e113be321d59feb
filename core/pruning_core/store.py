"""The Redis schema of the service: job records, event streams, indexes, artifact records.

This is the only module that knows key names. The server uses :class:`AsyncJobStore`, the
workers :class:`JobStore`; both share the key layout, the Lua scripts and the pure
state-transition helpers below.

Keys (``P`` is the configured prefix)::

    P:job:<id>                  hash: job (Job proto bytes), version, state, attempt, tenant,
                                      last_event_id, enqueued
    P:events:<id>               stream of JobEvent proto bytes (field "e"); ids are event ids
    P:tenant:<t>:jobs           sorted set of job ids (score 0, ids sort by creation time)
    P:tenant:<t>:state:<n>      the same, of the tenant's jobs now in state ``n`` (the JobState
                                      number); moved with the record in the same script
    P:tenant:<t>:label:<len>:<k>=<v>
                                the same, of the tenant's jobs with label ``k`` = ``v`` (``len``
                                      is len(k), so no key/value pair reads as another);
                                      written at create (labels never change)
    P:index-version             the job indexes' layout (INDEX_VERSION) once every job
                                      recorded before them is in them (``backfill_indexes``)
    P:idem:<t>:<key>            job id created with an idempotency key
    P:cancel:<id>               set while a cancel was asked for a running job
    P:artifact:<t>:<sha256>     hash: one tenant's record of an artifact: size, kind, format,
                                      filename, created, info (JSON). The bytes are shared by
                                      content; the metadata is each tenant's own.
    P:artifact:<sha256>         the same, shared by every tenant (records written before
                                      per-tenant records; still read)
    P:artifact-owners:<sha256>  set of tenants holding a record of the artifact (its blob may
                                      go once it is empty)
    P:artifacts-by-time         sorted set "<sha256>:<tenant>" -> record created (unix s)
    P:tenant:<t>:artifacts      set of artifact ids the tenant may read
    P:tenant:<t>:artifacts-by-time
                                sorted set: the tenant's artifact ids -> when the tenant first
                                      stored each (unix s: a record written again keeps its
                                      place); changed with the record in the same scripts
    P:tenant:<t>:artifacts-by-time:<n>
                                the same, of the tenant's artifacts of kind ``n`` (ArtifactKind)
    P:artifact-index-version    ARTIFACT_INDEX_VERSION once every record written before those
                                      two is in them (``backfill_artifact_index``)
    P:running                   sorted set: running job id -> last worker heartbeat (unix s)
    P:finished                  sorted set: ended job id -> when it ended (unix s), for retention
    P:watch-wake:<process>      stream a server appends to, to wake its own blocking watch read
"""

from __future__ import annotations

import builtins
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from google.protobuf import json_format, timestamp_pb2

from pruning.v1 import pruning_pb2 as pb

from .blobs import is_artifact_id

LAST_STREAM_ID = f"{2**64 - 1}-{2**64 - 1}"  # the largest id a Redis stream entry can have
TERMINAL = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})
# An idempotency key lives as long as its job's (or sweep's) record: the retention deletes both
# together, so a retry, however late (a pipeline's backfill), finds the job while it exists.
IDEMPOTENCY_TTL_S = 0  # 0 = no expiry of its own
MARKER_TTL_S = 7 * 24 * 3600  # a lost attempt's or a cancel's marker
# 1: jobs indexed by tenant, by state and by label.
INDEX_VERSION = 1
# 1: idempotency keys without an expiry of their own (they go with their job or sweep).
IDEMPOTENCY_VERSION = 1
# 1: the inputs of jobs not ended, and of sweeps still driven, pinned (see _DROP_RECORD).
PINS_VERSION = 1
# 1: artifact records indexed by tenant and time, and by kind.
ARTIFACT_INDEX_VERSION = 1
ARTIFACT_KINDS = tuple(k for k in pb.ArtifactKind.values() if k)
UPLOAD_KINDS = (pb.ARTIFACT_KIND_MODEL, pb.ARTIFACT_KIND_DATASET)  # what a client uploads; jobs name them
STATES = tuple(pb.JobState.values())
ACTIVE = (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING)  # a tenant's jobs in flight


_ACTIVE_LIST = "," + ",".join(str(int(s)) for s in ACTIVE) + ","  # _DROP_RECORD's states of a job not ended


def job_inputs(spec: pb.JobSpec) -> list[str]:
    """The artifacts a job reads: its model and its uploaded dataset (not a built-in one); an
    id that is none (the server refuses such a job before it is recorded) reads nothing."""
    ids = [spec.model_id]
    if spec.dataset.WhichOneof("source") == "artifact_id":
        ids.append(spec.dataset.artifact_id)
    return list(dict.fromkeys(i for i in ids if is_artifact_id(i)))


class ArtifactInUse(Exception):
    """Jobs that have not ended read this artifact: its record stays until they end."""

    def __init__(self, artifact_id: str, reader: str, readers: int):
        self.artifact_id, self.readers = artifact_id, readers
        kind, _, name = reader.rpartition(":")  # a pin: a job's id, or sweep:<id>
        self.reader = f"{kind or 'job'} {name}"  # "job 0123...", "sweep 0123..."
        # who reads it, as an answer says: "job 0123... (and 2 more)"
        self.who = self.reader + (f" (and {readers - 1} more)" if readers > 1 else "")
        super().__init__(f"{self.who} reads artifact {artifact_id} and has not ended")


class InputGone(KeyError):
    """A job's input was deleted between its check and the job's record."""


class HeldAsAnotherKind(Exception):
    """The tenant holds this content as a kind that the write may not change (one record per
    content: a model's record turned into a dataset's would change under the jobs naming it)."""

    def __init__(self, artifact_id: str, kind: int):
        super().__init__(f"artifact {artifact_id} is held as kind {kind}")
        self.artifact_id, self.kind = artifact_id, kind


def _kind_list(kinds: Iterable[int]) -> str:
    """Kinds as the record scripts match them: ",1,2,"."""
    return "," + "".join(f"{int(k)}," for k in kinds)


class TooManyActiveJobs(Exception):
    """The tenant has as many jobs queued, running or being cancelled as it may."""

    def __init__(self, active: int):
        super().__init__(f"{active} jobs of this tenant are queued, running or being cancelled, the most allowed")
        self.active = active


_MAX_LIST_BATCH = 1000
_LISTED_FIELDS = (b"job", b"last_event_id", b"tenant")

# KEYS: job, events, index, idem, unsent, the tenant's QUEUED, RUNNING and CANCELLING indexes,
# the job's state index, label indexes..., then of each input (the artifacts the job reads) its
# pins, the tenant's record of it and the tenant's artifacts ;
# ARGV: job bytes, state, tenant, event bytes, job id, the idempotency key's TTL (0 = none), fingerprint, now, the most active
# jobs the tenant may have (0 = no limit), the queue its task goes to, the inputs' ids.
# Returns {1, id} (created), {0, id} (the idempotency key's job), {-1, active jobs} (over the
# limit), {-2, an input's id} (the tenant holds no record of it: deleted since it was checked).
# The job pins its inputs until it ends (_UPDATE): neither a DeleteArtifact nor the retention
# takes their records, and so their bytes, from under it (_DROP_RECORD).
_CREATE = """
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {0, existing} end
end
local inputs = #ARGV - 10
local labels_end = #KEYS - 3 * inputs
for i = 1, inputs do
  local at = labels_end + 3 * (i - 1)
  if redis.call('EXISTS', KEYS[at + 2]) == 0 and redis.call('SISMEMBER', KEYS[at + 3], ARGV[10 + i]) == 0 then
    return {-2, ARGV[10 + i]}
  end
end
local most = tonumber(ARGV[9])
if most > 0 then
  local active = redis.call('ZCARD', KEYS[6]) + redis.call('ZCARD', KEYS[7]) + redis.call('ZCARD', KEYS[8])
  if active >= most then return {-1, active} end
end
local pins = {}
for i = 1, inputs do
  local key = KEYS[labels_end + 3 * (i - 1) + 1]
  redis.call('SADD', key, ARGV[5])
  table.insert(pins, key)
end
redis.call('HSET', KEYS[1], 'job', ARGV[1], 'version', 1, 'state', ARGV[2], 'attempt', 0,
           'tenant', ARGV[3], 'enqueued', 0, 'fingerprint', ARGV[7], 'idem', KEYS[4], 'queue', ARGV[10],
           'pins', table.concat(pins, ' '))
local eid = redis.call('XADD', KEYS[2], '*', 'e', ARGV[4])
redis.call('HSET', KEYS[1], 'last_event_id', eid)
for i = 9, labels_end do redis.call('ZADD', KEYS[i], 0, ARGV[5]) end
redis.call('ZADD', KEYS[3], 0, ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[8], ARGV[5])
if KEYS[4] ~= '' then
  if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6])
  else redis.call('SET', KEYS[4], ARGV[5]) end
end
return {1, ARGV[5]}
"""

# Lua: puts artifact ``id`` in the tenant's set by time KEYS[all] at ``score`` unless it is
# there (a record written again keeps its place: when the tenant first stored it), then in its
# kind's set (the key ``kind_key``) at that place and out of the other kinds' (KEYS[from..to]).
_PLACE = """
local function place(all, from, to, kind_key, score, id)
  redis.call('ZADD', KEYS[all], 'NX', score, id)
  local first = redis.call('ZSCORE', KEYS[all], id)
  for i = from, to do
    if KEYS[i] == kind_key then redis.call('ZADD', KEYS[i], first, id) else redis.call('ZREM', KEYS[i], id) end
  end
end
"""

# One tenant's record of an artifact, and the count of the bytes its records hold, change
# together in these scripts (a record counts its size while its hash exists).
# KEYS: the record, the tenant's artifacts, the artifact's owners, the records by time, the
# tenant's byte count, the tenant's artifacts by time, the same of each kind, then a job's
# staged exports ('' for none: a new record is staged there, id -> "<attempt> <created>", until
# the job succeeds), then the artifact's shared record (from before per-tenant records) ;
# ARGV: artifact id, tenant, created, "<id>:<tenant>", size, the attempt that stages it, the
# key of the record's kind by time, the kinds a record held refuses the write as (",1,2,"
# style), the kinds a record held is kept as, then the record's fields and values.
# Returns {1 or 0: the tenant had no record / had one, 0}, or {-1: refused / -2: kept, the
# kind held}. A record kept stays as it is but for its time: its retention starts over (a
# shared record from before per-tenant records is left as it is). A record written again
# keeps its place in the tenant's sets by time (when it was first stored); one written again
# as another kind moves to that kind's set.
_PUT_RECORD = (
    _PLACE
    + """
local staged, shared = KEYS[#KEYS - 1], KEYS[#KEYS]
local held = redis.call('HGET', KEYS[1], 'kind')
local own = held
if not held and redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then held = redis.call('HGET', shared, 'kind') end
if held and string.find(ARGV[8], ',' .. held .. ',', 1, true) then return {-1, tonumber(held)} end
if held and string.find(ARGV[9], ',' .. held .. ',', 1, true) then
  if own then
    redis.call('HSET', KEYS[1], 'created', ARGV[3])
    redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
  end
  return {-2, tonumber(held)}
end
local new = not own  -- counted from now on; a shared record from before was not, nor staged
local first_job = own and redis.call('HGET', KEYS[1], 'job')
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
-- an export another job stores again stays the first job's; the other is kept as 'job_again',
-- named instead if the first job takes its exports back (it failed: _HAND_OVER)
local writer = redis.call('HGET', KEYS[1], 'job')
if first_job and first_job ~= '' and writer ~= '' then
  redis.call('HSET', KEYS[1], 'job', first_job)
  if writer ~= first_job then redis.call('HSET', KEYS[1], 'job_again', writer) end
end
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
place(6, 7, #KEYS - 2, ARGV[7], ARGV[3], ARGV[1])
if new and redis.call('EXISTS', KEYS[5]) == 1 then redis.call('INCRBY', KEYS[5], ARGV[5]) end
if not held and staged ~= '' then redis.call('HSET', staged, ARGV[1], ARGV[6] .. ' ' .. ARGV[3]) end
return {new and 1 or 0, 0}
"""
)

# KEYS: an artifact's record ; ARGV: a job taking back its exports. A record that stays (another
# job stored the same bytes since) names that other job rather than one that failed.
_HAND_OVER = """
if redis.call('HGET', KEYS[1], 'job') ~= ARGV[1] then return 0 end
local again = redis.call('HGET', KEYS[1], 'job_again')
if not again or again == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'job', again)
redis.call('HDEL', KEYS[1], 'job_again')
return 1
"""

# KEYS: as _PUT_RECORD, without the staged exports, then the record's pins ('' = not asked) ;
# ARGV: artifact id, tenant, "<id>:<tenant>", the 'created' the record must still have ('' =
# any), a time it must have been created before ('' = any: the retention's cutoff), the prefix
# of a job's key, the states of a job not ended (",1,2,5," style), and the set of sweeps still
# driven (a pin ``sweep:<id>`` holds while its sweep is there). Returns 1 when it
# removed the record, 0 when it was written again since (another job's identical export, an
# upload of the same bytes) or there was none, {-1, a job's id (or sweep:<id>), how many} while
# jobs not ended or sweeps read it (a pin of one that ended, or is gone, is dropped on the way).
_DROP_RECORD = """
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'created') ~= ARGV[4] then return 0 end
local pins = KEYS[#KEYS]
if pins ~= '' then
  local readers, first = 0, nil
  for _, reader in ipairs(redis.call('SMEMBERS', pins)) do
    local live
    if string.sub(reader, 1, 6) == 'sweep:' then
      live = redis.call('SISMEMBER', ARGV[8], string.sub(reader, 7)) == 1
    else
      local state = redis.call('HGET', ARGV[6] .. reader, 'state')
      live = state and string.find(ARGV[7], ',' .. state .. ',', 1, true)
    end
    if live then
      readers = readers + 1
      first = first or reader
    else
      redis.call('SREM', pins, reader)
    end
  end
  if readers > 0 then return {-1, first, readers} end
end
if ARGV[5] ~= '' then
  local created = tonumber(redis.call('HGET', KEYS[1], 'created') or '0')
  if created >= tonumber(ARGV[5]) then
    redis.call('ZADD', KEYS[4], created, ARGV[3])  -- the index says when it was written
    return 0
  end
end
local size = redis.call('HGET', KEYS[1], 'size')
local existed = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
for i = 6, #KEYS - 1 do redis.call('ZREM', KEYS[i], ARGV[1]) end
if existed == 1 and size and redis.call('EXISTS', KEYS[5]) == 1 then redis.call('DECRBY', KEYS[5], size) end
return existed
"""

# The tenant's own record of an artifact written again (new file name, created now), only if
# it still exists: one the retention or a DeleteArtifact just removed is not brought back.
# KEYS: the record, the records by time, the tenant's artifacts by time, the same of each kind ;
# ARGV: created, "<id>:<tenant>", artifact id, the key of the record's kind by time, the kind,
# then the fields and values to set. Returns 1 when it wrote, 0 when there was no record of
# that kind. The record keeps its place in the tenant's sets by time, as in _PUT_RECORD.
_REFRESH_RECORD = (
    _PLACE
    + """
if redis.call('HGET', KEYS[1], 'kind') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
place(3, 4, #KEYS, ARGV[4], ARGV[1], ARGV[3])
return 1
"""
)

# KEYS: the tenant's record, the shared record (from before per-tenant records), the tenant's
# artifacts, the tenant's artifacts by time, the same of each kind ; ARGV: artifact id, then
# the kind of each of those sets. Puts a record written before the sets into them, at its time
# (the first store is not known), as it is now (one removed or written again meanwhile is left
# to the scripts that did it).
_BACKFILL_ARTIFACT = (
    _PLACE
    + """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return 0 end
local record = KEYS[1]
if redis.call('EXISTS', record) == 0 then record = KEYS[2] end
local kind, created = unpack(redis.call('HMGET', record, 'kind', 'created'))
if not created then return 0 end
local kind_key = ''
for i = 5, #KEYS do
  if ARGV[i - 3] == kind then kind_key = KEYS[i] end
end
place(4, 5, #KEYS, kind_key, created, ARGV[1])
return 1
"""
)

# KEYS: the tenant's artifacts, the tenant's artifacts by time, the same of each kind ; ARGV:
# artifact id. Drops an id the tenant holds no record of from its sets by time (left there by
# a process from before them removing the record). Returns 1 when it dropped it.
_UNINDEX_ARTIFACT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""

# KEYS: the tenant's byte count, the tenant's artifacts ; ARGV: the key of a record less its id.
# The count, made from the records the first time (a deployment from before the count).
_COUNT = """
local count = redis.call('GET', KEYS[1])
if count then
  count = tonumber(count)
else
  count = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    count = count + tonumber(redis.call('HGET', ARGV[1] .. id, 'size') or 0)
  end
  redis.call('SET', KEYS[1], count)
end
"""
_COUNT_BYTES = _COUNT + "return count"

# KEYS: as _COUNT_BYTES, then the tenant's reservations (token -> "<bytes> <until, ms>") ;
# ARGV: as _COUNT_BYTES, then the upload's token, the bytes it reserves in all, the quota, and
# how long the reservation holds (ms). Reservations past their time (a server that died
# mid-upload) are dropped. Returns {1 when reserved else 0, the count, the others' reservations}.
# Redis's clock in ms: one clock for every server's reservations.
_NOW = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""
_RESERVE = (
    _COUNT
    + _NOW
    + """
local others = 0
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[2] then
    local bytes, ends = string.match(all[i + 1], '(%d+) (%d+)')
    if tonumber(ends) < now then redis.call('HDEL', KEYS[3], all[i]) else others = others + tonumber(bytes) end
  end
end
if count + others + tonumber(ARGV[3]) > tonumber(ARGV[4]) then return {0, count, others} end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. ' ' .. (now + tonumber(ARGV[5])))
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return {1, count, others}
"""
)

# KEYS: the tenant's reservations ; ARGV: the upload's token, its bytes, how long it holds (ms).
# Renews an upload's reservation without asking the quota again: what it was granted stays its.
# One that lapsed (its renewals came too late: Redis or the server stalled) is not brought back,
# since other uploads may have been granted its room meanwhile: returns 0, else 1.
_RENEW = (
    _NOW
    + """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held or tonumber(string.match(held, '%d+ (%d+)')) < now then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS: job, events, finished, index of the state read, index of the new state, the running
# jobs by last heartbeat ; ARGV: expected version, job bytes, state, attempt, ended at ('' while
# the job goes on), job id, event bytes... Returns {1, the last event's id ('' for none)}, 0 on
# a version conflict, -1 for a missing job. A new attempt (the attempt changed) goes into the
# running set with the same write, so the reaper sees it before its first heartbeat: a worker
# lost between its claim and that heartbeat no longer leaves the job RUNNING for good.
_UPDATE = """
local version = redis.call('HGET', KEYS[1], 'version')
if not version then return -1 end
if version ~= ARGV[1] then return 0 end
if ARGV[3] == '@RUNNING@' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[4] then
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[6], tonumber(now[1]) + tonumber(now[2]) / 1e6, ARGV[6])
end
redis.call('HSET', KEYS[1], 'job', ARGV[2], 'version', tonumber(version) + 1,
           'state', ARGV[3], 'attempt', ARGV[4])
if KEYS[4] ~= KEYS[5] then redis.call('ZREM', KEYS[4], ARGV[6]) end
redis.call('ZADD', KEYS[5], 0, ARGV[6])
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
  local pins = redis.call('HGET', KEYS[1], 'pins')  -- the job ended: its inputs may go
  if pins then
    for key in string.gmatch(pins, '%S+') do redis.call('SREM', key, ARGV[6]) end
    redis.call('HDEL', KEYS[1], 'pins')
  end
end
local eid = ''
for i = 7, #ARGV do
  eid = redis.call('XADD', KEYS[2], '*', 'e', ARGV[i])
  redis.call('HSET', KEYS[1], 'last_event_id', eid)
end
return {1, eid}
""".replace("@RUNNING@", str(pb.JOB_STATE_RUNNING))


# KEYS: job, then the pins of each of its inputs ; ARGV: job id, the states of a job not ended
# (",1,2,5," style). Pins the inputs of a job recorded before jobs pinned them, while it has not
# ended (one that ended since it was read reads nothing more); returns 1 when it pinned.
_BACKFILL_PINS = """
if redis.call('HEXISTS', KEYS[1], 'pins') == 1 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if not state or not string.find(ARGV[2], ',' .. state .. ',', 1, true) then return 0 end
for i = 2, #KEYS do redis.call('SADD', KEYS[i], ARGV[1]) end
redis.call('HSET', KEYS[1], 'pins', table.concat(KEYS, ' ', 2))
return 1
"""

# KEYS: job, its state's index ; ARGV: that state, job id. Indexes a job recorded before the
# state index, unless its state changed since it was read (the change indexed it).
_BACKFILL = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return 0 end
return redis.call('ZADD', KEYS[2], 0, ARGV[2])
"""

# KEYS: running ; ARGV: job id, the score a claim of silent jobs gave it. Removes its entry only
# while it still has that score.
_FORGET = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: running ; ARGV: cutoff, now. Claims the silent jobs (one server wins each).
_REAP = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


class JobNotFound(KeyError):
    """No job with this id (for this tenant)."""


class StaleAttempt(RuntimeError):
    """A newer attempt owns the job: this writer must stop."""


class TransitionRejected(RuntimeError):
    """The job is in a state where the asked change cannot happen."""


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def tenant_state(self, tenant: str, state: int) -> str:
        return f"{self.prefix}:tenant:{tenant}:state:{state}"

    def tenant_label(self, tenant: str, key: str, value: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:label:{len(key)}:{key}={value}"

    def index_version(self) -> str:
        return f"{self.prefix}:index-version"

    def idempotency_version(self) -> str:
        return f"{self.prefix}:idempotency-version"

    def pins_version(self) -> str:
        return f"{self.prefix}:pins-version"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant}:{key}"

    def born(self) -> str:
        return f"{self.prefix}:born"

    def deployment(self) -> str:
        """A random id of this job store, set once: the artifact store's marker names it."""
        return f"{self.prefix}:deployment"

    def lost(self, job_id: str) -> str:
        return f"{self.prefix}:lost:{job_id}"

    def released(self) -> str:
        """Artifacts whose last record a DeleteArtifact removed: their bytes may go, however old."""
        return f"{self.prefix}:released"

    def unsent(self) -> str:
        """Jobs recorded whose task is not known to be sent yet, by when they were recorded."""
        return f"{self.prefix}:unsent"

    def sending(self, job_id: str) -> str:
        return f"{self.prefix}:sending:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def artifact_store_stops(self, job_id: str) -> str:
        """How many attempts of the job the artifact store stopped (it did not answer) in the
        outage going on."""
        return f"{self.prefix}:artifact-store-stops:{job_id}"

    def artifact_store_stopped_at(self, job_id: str) -> str:
        """When the artifact store first stopped an attempt of the job in the outage going on (unix s)."""
        return f"{self.prefix}:artifact-store-stopped-at:{job_id}"

    def artifact_store_answers(self, job_id: str) -> str:
        """How many times the artifact store answered an attempt of the job after stopping one."""
        return f"{self.prefix}:artifact-store-answers:{job_id}"

    def staged(self, job_id: str) -> str:
        """Export records a job's attempts added (id -> "<attempt> <created>"), until the job
        succeeds: a worker lost while storing them leaves records the job never lists."""
        return f"{self.prefix}:staged:{job_id}"

    def running(self) -> str:
        return f"{self.prefix}:running"

    def artifact(self, artifact_id: str) -> str:
        return f"{self.prefix}:artifact:{artifact_id}"

    def sweep(self, sweep_id: str) -> str:
        """A sweep's record (sweeps.SweepStore keeps it)."""
        return f"{self.prefix}:sweep:{sweep_id}"

    def active_sweeps(self) -> str:
        """Sweeps still driven (an ended one until its last trial ends too)."""
        return f"{self.prefix}:sweeps:active"

    def pins(self, tenant: str, artifact_id: str) -> str:
        """What reads the tenant's artifact (a model or dataset): jobs that have not ended, by
        id, and sweeps still driven, as ``sweep:<id>``."""
        return f"{self.prefix}:pins:{tenant}:{artifact_id}"

    def tenant_artifacts(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:artifacts"

    def tenant_bytes(self, tenant: str) -> str:
        """Bytes of the artifacts the tenant holds records of (each record counts its bytes)."""
        return f"{self.prefix}:tenant:{tenant}:bytes"

    def tenant_reserved(self, tenant: str) -> str:
        """Bytes the tenant's uploads under way have reserved of its quota, by upload."""
        return f"{self.prefix}:tenant:{tenant}:reserved"

    def tenant_artifact(self, tenant: str, artifact_id: str) -> str:
        return f"{self.prefix}:artifact:{tenant}:{artifact_id}"

    def tenant_artifacts_by_time(self, tenant: str, kind: int = 0) -> str:
        """The tenant's artifact ids by record time; of one kind, unless ``kind`` is 0."""
        key = f"{self.prefix}:tenant:{tenant}:artifacts-by-time"
        return f"{key}:{kind}" if kind else key

    def artifact_index_version(self) -> str:
        return f"{self.prefix}:artifact-index-version"

    def artifact_owners(self, artifact_id: str) -> str:
        return f"{self.prefix}:artifact-owners:{artifact_id}"

    def artifacts_by_time(self) -> str:
        return f"{self.prefix}:artifacts-by-time"

    def finished(self) -> str:
        return f"{self.prefix}:finished"

    def watch_wake(self, process: str) -> str:
        return f"{self.prefix}:watch-wake:{process}"


def new_job_id() -> str:
    """Ids sort by creation time (ms, hex) and end with 48 random bits."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(6).hex()}"


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def make_event(job_id: str, **kind) -> pb.JobEvent:
    event = pb.JobEvent(job_id=job_id, **kind)
    event.time.CopyFrom(now())
    return event


def state_event(job: pb.Job, to: pb.JobState.ValueType, error: pb.JobError | None = None) -> pb.JobEvent:
    """Moves ``job`` to state ``to`` (stamping times) and returns the matching event."""
    change = pb.StateChange(to=to, attempt=job.attempt)
    setattr(change, "from", job.state)
    if error is not None:
        change.error.CopyFrom(error)
        job.error.CopyFrom(error)
    job.state = to
    if to == pb.JOB_STATE_RUNNING and not job.HasField("started_at"):
        job.started_at.CopyFrom(now())
    if to in TERMINAL:
        job.finished_at.CopyFrom(now())
        job.progress.ClearField("eta_seconds")  # nothing is left to wait for
    return make_event(job.id, state_change=change)


def last_event_age_s(job: pb.Job) -> float:
    """Seconds since the job's last event (its stream id starts with the time in ms); a claim,
    a progress or a log line all write one. Infinite when the job has none."""
    head = job.last_event_id.split("-", 1)[0]
    return time.time() - int(head) / 1000 if head.isdigit() else float("inf")


def decode_event(event_id, fields) -> pb.JobEvent:
    event = pb.JobEvent.FromString(fields[b"e"])
    event.id = _text(event_id)
    return event


def _text(value: bytes | str) -> str:
    """A name or id as Redis answered it (bytes), or as given."""
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _decode_job(raw: dict) -> pb.Job:
    job = pb.Job.FromString(raw[b"job"])
    job.last_event_id = raw.get(b"last_event_id", b"").decode()
    return job


@dataclass(frozen=True)
class ArtifactRecord:
    id: str
    kind: pb.ArtifactKind.ValueType
    format: str
    filename: str
    size: int
    created: float
    info: dict
    job: str = ""  # an export's or a report's job
    crc32: int | None = None  # of the bytes, beside their sha256; None in a record older than it

    def to_proto(self) -> pb.Artifact:
        art = pb.Artifact(
            id=self.id,
            kind=self.kind,
            filename=self.filename,
            size=self.size,
            sha256=self.id,
            format=self.format,
            job_id=self.job,
            crc32=self.crc32,
        )
        art.created_at.FromNanoseconds(int(self.created * 1e9))
        if self.info.get("summary"):
            json_format.ParseDict(self.info["summary"], art.model, ignore_unknown_fields=True)
        return art

    def to_mapping(self) -> dict:
        mapping = {
            "kind": self.kind,
            "format": self.format,
            "filename": self.filename,
            "size": self.size,
            "created": self.created,
            "info": json.dumps(self.info),
            "job": self.job,
        }
        if self.crc32 is not None:
            mapping["crc32"] = self.crc32
        return mapping

    def fields(self) -> list[Any]:
        """:meth:`to_mapping` flattened, field then value, as HSET takes them in a script."""
        return [x for kv in self.to_mapping().items() for x in kv]

    @classmethod
    def from_mapping(cls, artifact_id: str, raw: dict) -> ArtifactRecord:
        text = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=artifact_id,
            kind=pb.ArtifactKind.ValueType(int(text["kind"])),
            format=text["format"],
            filename=text["filename"],
            size=int(text["size"]),
            created=float(text["created"]),
            info=json.loads(text["info"]),
            job=text.get("job", ""),
            crc32=int(text["crc32"]) if text.get("crc32") else None,
        )


Mutation = Callable[[pb.Job], list[pb.JobEvent]]
T = TypeVar("T")
# One operation, written once for both stores: a generator that yields each Redis call and is
# sent its result. Blocking clients return results, asyncio clients awaitables; the two
# drivers below tell them apart, so the logic has one copy.
Steps = Generator[Any, Any, T]


def _ms(seconds: float) -> int:
    """A duration for Redis (PEXPIRE and the reservation scripts): whole ms, at least 1."""
    return max(1, int(seconds * 1000))


def _drive(steps: Steps[T]) -> T:
    value = None
    try:
        while True:
            value = steps.send(value)
    except StopIteration as stop:
        return stop.value


async def _drive_async(steps: Steps[T]) -> T:
    value = None
    try:
        while True:
            value = await steps.send(value)
    except StopIteration as stop:
        return stop.value


class _Base:
    def __init__(self, client: Any, prefix: str):
        self.redis = client
        self.keys = Keys(prefix)
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)
        self._reap = client.register_script(_REAP)
        self._forget = client.register_script(_FORGET)
        self._backfill = client.register_script(_BACKFILL)
        self._backfill_pins = client.register_script(_BACKFILL_PINS)
        self._put_record = client.register_script(_PUT_RECORD)
        self._drop_record = client.register_script(_DROP_RECORD)
        self._hand_over = client.register_script(_HAND_OVER)
        self._refresh_record = client.register_script(_REFRESH_RECORD)
        self._backfill_artifact = client.register_script(_BACKFILL_ARTIFACT)
        self._unindex_artifact = client.register_script(_UNINDEX_ARTIFACT)
        self._count_bytes = client.register_script(_COUNT_BYTES)
        self._reserve = client.register_script(_RESERVE)
        self._renew = client.register_script(_RENEW)

    def _create_args(
        self,
        tenant: str,
        job: pb.Job,
        idempotency_key: str,
        fingerprint: str = "",
        max_active: int = 0,
        queue: str = "",
    ) -> tuple[list[str], list[Any]]:
        event = state_event(job, pb.JOB_STATE_QUEUED)
        idem = self.keys.idempotency(tenant, idempotency_key) if idempotency_key else ""
        keys = [self.keys.job(job.id), self.keys.events(job.id), self.keys.tenant_jobs(tenant), idem]
        keys.append(self.keys.unsent())  # until its task is sent (mark_enqueued)
        keys += [self.keys.tenant_state(tenant, s) for s in ACTIVE]  # counted against max_active
        keys.append(self.keys.tenant_state(tenant, job.state))
        keys += [self.keys.tenant_label(tenant, k, v) for k, v in job.labels.items()]
        inputs = job_inputs(job.spec)
        for artifact_id in inputs:
            keys += [
                self.keys.pins(tenant, artifact_id),
                self.keys.tenant_artifact(tenant, artifact_id),
                self.keys.tenant_artifacts(tenant),
            ]
        args = [
            job.SerializeToString(),
            job.state,
            tenant,
            event.SerializeToString(),
            job.id,
            IDEMPOTENCY_TTL_S,
            fingerprint,
            repr(time.time()),
            max_active,
            queue,
            *inputs,
        ]
        return keys, args

    @staticmethod
    def _owned(raw: dict[bytes, bytes], tenant: str | None) -> bool:
        return bool(raw) and (tenant is None or raw.get(b"tenant", b"").decode() == tenant)

    def _get(self, job_id: str, tenant: str | None) -> Steps[pb.Job]:
        raw = yield self.redis.hgetall(self.keys.job(job_id))
        if not self._owned(raw, tenant):
            raise JobNotFound(job_id)
        return _decode_job(raw)

    def _tenant_of(self, job_id: str) -> Steps[str | None]:
        tenant = yield self.redis.hget(self.keys.job(job_id), "tenant")
        return tenant.decode() if tenant is not None else None

    def _update_steps(self, job_id: str, tenant: str | None, mutate: Mutation) -> Steps[pb.Job]:
        """Applies ``mutate`` to the record and appends the events it returns, atomically;
        a concurrent writer makes it read and mutate again. A mutation that changes nothing
        and returns no event writes nothing."""
        keys = [self.keys.job(job_id), self.keys.events(job_id), self.keys.finished()]
        running = self.keys.running()
        while True:
            raw = yield self.redis.hgetall(keys[0])
            if not self._owned(raw, tenant):
                raise JobNotFound(job_id)
            job = _decode_job(raw)
            before = job.SerializeToString()
            events = mutate(job)
            after = job.SerializeToString()
            if not events and after == before:
                return job  # e.g. a sweep driver's step that found nothing new for the job
            ended = time.time() if job.state in TERMINAL else ""
            owner = raw[b"tenant"].decode()
            indexes = [self.keys.tenant_state(owner, int(raw[b"state"])), self.keys.tenant_state(owner, job.state)]
            args = [raw[b"version"], after, job.state, job.attempt, ended, job_id]
            outcome = yield self._update(
                keys=[*keys, *indexes, running], args=args + [e.SerializeToString() for e in events]
            )
            if isinstance(outcome, list):
                last = outcome[1].decode() if isinstance(outcome[1], bytes) else outcome[1]
                job.last_event_id = last or job.last_event_id  # the record as stored, its new events included
                return job
            if outcome == -1:
                raise JobNotFound(job_id)

    def _record_keys(self, tenant: str, artifact_id: str) -> list[str]:
        return [
            self.keys.tenant_artifact(tenant, artifact_id),
            self.keys.tenant_artifacts(tenant),
            self.keys.artifact_owners(artifact_id),
            self.keys.artifacts_by_time(),
            self.keys.tenant_bytes(tenant),
            *self._time_keys(tenant),
        ]

    def _time_keys(self, tenant: str) -> list[str]:
        """The tenant's artifacts by time: all of them, then of each kind (ARTIFACT_KINDS)."""
        return [self.keys.tenant_artifacts_by_time(tenant, kind) for kind in (0, *ARTIFACT_KINDS)]

    def _put_artifact(
        self,
        tenant: str,
        record: ArtifactRecord,
        staged_for: str = "",
        attempt: int = 0,
        refuse: Iterable[int] = (),
        keep: Iterable[int] = (),
    ) -> Steps[bool]:
        """Writes the tenant's record (True when it had none): each tenant has its own record
        of shared bytes, which another tenant's upload never changes. Record, indexes and byte
        count in one script; a new record of job ``staged_for``'s export is staged too, as
        ``attempt``'s. A record the tenant holds as one of the kinds ``refuse`` names raises
        :class:`HeldAsAnotherKind`; one held as a kind ``keep`` names stays as it is, but for
        its time: its retention starts over (False). A shared record from before per-tenant
        records counts as the tenant's."""
        args = [
            *(record.id, tenant, record.created, f"{record.id}:{tenant}", record.size, attempt),
            self.keys.tenant_artifacts_by_time(tenant, record.kind),
            _kind_list(refuse),
            _kind_list(keep),
            *record.fields(),
        ]
        keys = [
            *self._record_keys(tenant, record.id),
            self.keys.staged(staged_for) if staged_for else "",
            self.keys.artifact(record.id),
        ]
        outcome, held = yield self._put_record(keys=keys, args=args)
        if outcome == -1:
            raise HeldAsAnotherKind(record.id, held)
        return outcome == 1

    def _take_back_exports(self, job_id: str, tenant: str, attempts: Callable[[int], bool] | None) -> Steps[int]:
        """Removes the export records the job's attempts (those ``attempts`` selects; all when
        None) staged, each only as the job wrote it (another job's identical export, written
        since, stays); how many went."""
        key = self.keys.staged(job_id)
        staged = yield self.redis.hgetall(key)
        removed = 0
        for artifact_id, value in staged.items():
            attempt, _, created = value.decode().rpartition(" ")  # "<attempt> <created>"
            if attempts is not None and not attempts(int(attempt or 0)):
                continue  # another attempt's: it answers for its own
            if (yield from self._drop_artifact(tenant, artifact_id.decode(), created)):
                removed += 1
            else:  # stored again since by another job: the record stays, and names that one
                yield self._hand_over(keys=[self.keys.tenant_artifact(tenant, artifact_id.decode())], args=[job_id])
            yield self.redis.hdel(key, artifact_id)
        return removed

    def _drop_artifact(
        self,
        tenant: str,
        artifact_id: str,
        created: float | str = "",
        created_before: float | str = "",
        *,
        unless_read: bool = False,
    ) -> Steps[bool]:
        """Removes the tenant's record (see _DROP_RECORD); with ``unless_read``, raises
        ArtifactInUse instead while a job that has not ended reads it."""
        pins = self.keys.pins(tenant, artifact_id) if unless_read else ""
        args = [artifact_id, tenant, f"{artifact_id}:{tenant}", created, created_before]
        args += [self.keys.job(""), _ACTIVE_LIST, self.keys.active_sweeps()]
        outcome = yield self._drop_record(keys=[*self._record_keys(tenant, artifact_id), pins], args=args)
        if isinstance(outcome, list):
            raise ArtifactInUse(artifact_id, _text(outcome[1]), int(outcome[2]))
        return bool(outcome)

    def _get_artifact(self, tenant: str, artifact_id: str) -> Steps[ArtifactRecord]:
        if not (yield self.redis.sismember(self.keys.tenant_artifacts(tenant), artifact_id)):
            raise KeyError(artifact_id)
        raw = yield self.redis.hgetall(self.keys.tenant_artifact(tenant, artifact_id))
        if not raw:  # a record from before per-tenant records
            raw = yield self.redis.hgetall(self.keys.artifact(artifact_id))
        if not raw:
            raise KeyError(artifact_id)
        return ArtifactRecord.from_mapping(artifact_id, raw)


class JobStore(_Base):
    """Blocking access, for workers."""

    def __init__(self, client: redis.Redis, prefix: str):
        super().__init__(client, prefix)

    @classmethod
    def from_url(cls, url: str, prefix: str, socket_timeout_s: float = 30.0) -> JobStore:
        return cls(redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=10), prefix)

    def get(self, job_id: str) -> pb.Job:
        return _drive(self._get(job_id, None))

    def tenant_of(self, job_id: str) -> str:
        tenant = _drive(self._tenant_of(job_id))
        if tenant is None:
            raise JobNotFound(job_id)
        return tenant

    def update(self, job_id: str, mutate: Mutation) -> pb.Job:
        """Applies ``mutate`` to the record and appends the events it returns, atomically."""
        return _drive(self._update_steps(job_id, None, mutate))

    def heartbeat(self, job_id: str) -> None:
        self.redis.zadd(self.keys.running(), {job_id: time.time()})

    def done_running(self, job_id: str) -> None:
        self.redis.zrem(self.keys.running(), job_id)

    def expect_by(self, job_id: str, when: float) -> None:
        """Keeps a re-queued job in the running set as if its last heartbeat were at ``when``
        (unix s): a task sent with a countdown is held by the worker that fetched it, not by the
        broker's queue, and if nothing claims the job by ``when`` plus the reaper's silence the
        reaper sends it again (that worker may have died holding it)."""
        self.redis.zadd(self.keys.running(), {job_id: when})

    def last_heartbeat(self, job_id: str) -> float | None:
        """When the job's running attempt last marked itself alive (None: no attempt runs)."""
        value = self.redis.zscore(self.keys.running(), job_id)
        return None if value is None else float(value)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.keys.cancel(job_id)))

    def count_artifact_store_stop(self, job_id: str) -> tuple[int, float]:
        """Counts one more attempt of the job that the artifact store stopped; how many in this
        outage so far, and when its first was (unix s; both kept a week, longer than any job
        waits to run again)."""
        key, since = self.keys.artifact_store_stops(job_id), self.keys.artifact_store_stopped_at(job_id)
        with self.redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, 7 * 86400)
            pipe.set(since, repr(time.time()), nx=True, ex=7 * 86400)
            pipe.get(since)
            count, _, _, first = pipe.execute()
        return int(count), float(first)

    def artifact_store_stopped(self, job_id: str) -> int:
        """How many attempts of the job the artifact store stopped in the outage going on."""
        return int(self.redis.get(self.keys.artifact_store_stops(job_id)) or 0)

    def artifact_store_answered(self, job_id: str) -> None:
        """The store answered an attempt of the job again: the outage its stops measured is
        over, and the next stop starts a new one (its backoff and patience afresh); counted
        (:meth:`artifact_store_answers_of`)."""
        answers = self.keys.artifact_store_answers(job_id)
        with self.redis.pipeline() as pipe:
            pipe.delete(self.keys.artifact_store_stops(job_id), self.keys.artifact_store_stopped_at(job_id))
            pipe.incr(answers)
            pipe.expire(answers, 7 * 86400)
            pipe.execute()

    def artifact_store_answers_of(self, job_id: str) -> int:
        """How many times the store answered an attempt of the job after stopping one."""
        return int(self.redis.get(self.keys.artifact_store_answers(job_id)) or 0)

    def forget_artifact_store_stops(self, job_id: str) -> None:
        """The job ended: its stops are nobody's business any more."""
        self.redis.delete(
            self.keys.artifact_store_stops(job_id),
            self.keys.artifact_store_stopped_at(job_id),
            self.keys.artifact_store_answers(job_id),
        )

    def put_artifact(
        self,
        tenant: str,
        record: ArtifactRecord,
        staged_for: str = "",
        attempt: int = 0,
        *,
        refuse: Iterable[int] = (),
        keep: Iterable[int] = (),
    ) -> bool:
        """Writes the tenant's record of an artifact; True when the tenant had none (then,
        with ``staged_for``, staged as that job's export, of ``attempt``, until
        :meth:`keep_exports`). ``refuse`` and ``keep``: as in :meth:`_put_artifact`."""
        return _drive(self._put_artifact(tenant, record, staged_for, attempt, refuse, keep))

    def take_back_exports(self, job_id: str, tenant: str, attempts: Callable[[int], bool] | None = None) -> int:
        """Removes the export records the job staged (it did not succeed, or an earlier
        attempt was lost while storing them); ``attempts`` selects whose (all when None)."""
        return _drive(self._take_back_exports(job_id, tenant, attempts))

    def keep_exports(self, job_id: str, tenant: str, attempt: int) -> None:
        """The job succeeded: the export records ``attempt`` staged are its results. Those an
        earlier attempt staged (one thought lost that went on storing) are taken back: no
        result lists them."""
        self.take_back_exports(job_id, tenant, attempts=lambda staged_by: staged_by != attempt)
        self.redis.delete(self.keys.staged(job_id))

    def get_artifact(self, tenant: str, artifact_id: str) -> ArtifactRecord:
        return _drive(self._get_artifact(tenant, artifact_id))


# The job store did not answer (down, hung past the socket timeout, a read-only replica in a
# failover): an outage, never a job's outcome.
STORE_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)


# Below a client's default deadline (30 s): a Redis that hangs answers UNAVAILABLE (retry),
# not DEADLINE_EXCEEDED after the whole deadline. Every call the server makes is short.
SERVER_REDIS_TIMEOUT_S = 10.0


class AsyncJobStore(_Base):
    """asyncio access, for the gRPC server."""

    def __init__(self, client: aioredis.Redis, prefix: str):
        super().__init__(client, prefix)

    @classmethod
    def from_url(cls, url: str, prefix: str, max_connections: int = 100, pool_timeout_s: float = 5.0) -> AsyncJobStore:
        """A store on a bounded pool: a caller waits up to ``pool_timeout_s`` for a free
        connection (then redis.ConnectionError) instead of failing at once under a burst."""
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_timeout=SERVER_REDIS_TIMEOUT_S,
            socket_connect_timeout=SERVER_REDIS_TIMEOUT_S,
        )
        return cls(aioredis.Redis.from_pool(pool), prefix)

    @classmethod
    def single_connection(cls, url: str, prefix: str, socket_timeout_s: float) -> AsyncJobStore:
        """A store on one connection of its own (for a long blocking read)."""
        client = aioredis.Redis.from_url(
            url, single_connection_client=True, socket_timeout=socket_timeout_s, socket_connect_timeout=10
        )
        return cls(client, prefix)

    async def create(
        self,
        tenant: str,
        job: pb.Job,
        idempotency_key: str = "",
        fingerprint: str = "",
        *,
        max_active: int = 0,
        queue: str = "",
    ) -> tuple[pb.Job, bool]:
        """Records a new QUEUED job; returns (job, created). An idempotency key seen before
        returns the job it created instead (compare ``fingerprint_of`` to tell a true retry).
        With ``max_active``, a tenant with that many jobs queued, running or being cancelled
        gets :class:`TooManyActiveJobs` instead, decided in the same script as the record."""
        keys, args = self._create_args(tenant, job, idempotency_key, fingerprint, max_active, queue)
        created, job_id = await self._create(keys=keys, args=args)
        if created == -1:
            raise TooManyActiveJobs(int(job_id))
        if created == -2:
            raise InputGone(_text(job_id))
        job_id = _text(job_id)
        return await self.get(tenant, job_id), bool(created)

    async def fingerprint_of(self, job_id: str) -> str:
        value = await self.redis.hget(self.keys.job(job_id), "fingerprint")
        return value.decode() if value else ""

    async def get(self, tenant: str, job_id: str) -> pb.Job:
        return await _drive_async(self._get(job_id, tenant))

    async def is_enqueued(self, job_id: str) -> bool:
        return (await self.redis.hget(self.keys.job(job_id), "enqueued")) == b"1"

    async def mark_enqueued(self, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.job(job_id), "enqueued", 1)
            pipe.zrem(self.keys.unsent(), job_id)
            await pipe.execute()

    async def unsent_before(self, recorded_before: float, limit: int = 100) -> builtins.list[str]:
        """Jobs recorded before ``recorded_before`` (unix s) whose task was never marked sent:
        their CreateJob died between the record and the send, or lost the send to a call that did."""
        ids = await self.redis.zrangebyscore(self.keys.unsent(), "-inf", recorded_before, start=0, num=limit)
        return [_text(i) for i in ids]

    async def queue_of(self, job_id: str) -> str:
        """The queue the job's task goes to ("" for a job recorded before queues were kept)."""
        value = await self.redis.hget(self.keys.job(job_id), "queue")
        return value.decode() if value else ""

    async def still_unsent(self, job_id: str) -> bool:
        """Whether the job waits for its task to be sent (QUEUED, never sent); forgets it as
        unsent otherwise (ended, cancelled, deleted)."""
        state, enqueued = await self.redis.hmget(self.keys.job(job_id), "state", "enqueued")
        if state is not None and int(state) == pb.JOB_STATE_QUEUED and enqueued != b"1":
            return True
        await self.redis.zrem(self.keys.unsent(), job_id)
        return False

    async def active_jobs(self, tenant: str) -> int:
        """The tenant's jobs queued, running or being cancelled (its state indexes)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for state in ACTIVE:
                pipe.zcard(self.keys.tenant_state(tenant, state))
            return sum(await pipe.execute())

    async def claim_send(self, job_id: str, lease_s: int = 30) -> bool:
        """Whether this caller is the one to send the job's task now: concurrent CreateJob
        calls of one idempotency key send it once. The lease expires, so a sender that died
        before sending leaves the job to a later retry; ``release_send`` after a failed send."""
        return bool(await self.redis.set(self.keys.sending(job_id), 1, nx=True, ex=lease_s))

    async def release_send(self, job_id: str) -> None:
        await self.redis.delete(self.keys.sending(job_id))

    async def update(self, tenant: str, job_id: str, mutate: Mutation) -> pb.Job:
        return await _drive_async(self._update_steps(job_id, tenant, mutate))

    async def claim_silent(self, silent_s: float) -> tuple[list[str], float]:
        """Ids of running jobs with no heartbeat for ``silent_s``; each is returned to one
        caller only (its heartbeat is reset to the time also returned: see forget_running)."""
        now = time.time()
        ids = await self._reap(keys=[self.keys.running()], args=[now - silent_s, repr(now)])
        return [_text(i) for i in ids], now

    async def tenant_of(self, job_id: str) -> str | None:
        return await _drive_async(self._tenant_of(job_id))

    async def count_lost(self, job_id: str) -> int:
        """Counts one more attempt of the job lost with its worker; returns how many so far."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(self.keys.lost(job_id))
            pipe.expire(self.keys.lost(job_id), MARKER_TTL_S)
            count, _ = await pipe.execute()
        return int(count)

    async def lost_so_far(self, job_id: str) -> int:
        return int(await self.redis.get(self.keys.lost(job_id)) or 0)

    async def forget_running(self, job_id: str, claimed_at: float | None = None) -> None:
        """Takes the job out of the running set; with ``claimed_at`` (claim_silent's time) only
        while its entry is still the claim's: a worker that claimed the job since wrote its own
        (a new attempt, watched from its claim), which stays."""
        if claimed_at is None:
            await self.redis.zrem(self.keys.running(), job_id)
        else:
            await self._forget(keys=[self.keys.running()], args=[job_id, repr(claimed_at)])

    async def request_cancel(self, job_id: str) -> None:
        await self.redis.set(self.keys.cancel(job_id), 1, ex=MARKER_TTL_S)

    async def list(
        self,
        tenant: str,
        page_size: int,
        page_token: str,
        accept: Callable[[pb.Job], bool],
        *,
        states: Collection[int] = (),
        labels: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[pb.Job], str]:
        """Newest first; ``page_token`` is the last id of the previous page.

        ``states`` and ``labels`` say which indexes may hold the jobs ``accept`` takes: the
        states' indexes merged, or one label's, whichever holds fewer ids. ``accept`` still
        decides on every record read, so an index that lags the records never lets a wrong
        job through.

        Example::

            jobs, token = await store.list("acme", 50, "", lambda j: j.state == RUNNING, states=[RUNNING])
        """
        sources = await self._list_sources(tenant, states, labels or {})
        jobs: list[pb.Job] = []
        upper = f"({page_token}" if page_token else "+"
        batch = page_size
        while len(jobs) < page_size:
            ids = await self._newest_ids(sources, upper, batch)
            if not ids:
                return jobs, ""
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    # Three fields, not HGETALL's ten: parsing the reply was most of a call's time.
                    pipe.hmget(self.keys.job(job_id), *_LISTED_FIELDS)
                records = await pipe.execute()
            for job_id, values in zip(ids, records, strict=True):
                raw = {k: v for k, v in zip(_LISTED_FIELDS, values, strict=True) if v is not None}
                if b"job" in raw and self._owned(raw, tenant) and accept(job := _decode_job(raw)):
                    jobs.append(job)
                    if len(jobs) == page_size:
                        return jobs, job_id
            upper = f"({ids[-1]}"
            batch = min(2 * batch, _MAX_LIST_BATCH)  # the index held few matches: read wider
        return jobs, ""

    async def _list_sources(
        self, tenant: str, states: Collection[int], labels: Mapping[str, str]
    ) -> builtins.list[str]:
        """The index keys whose union holds every candidate: the smallest choice."""
        choices = [[self.keys.tenant_label(tenant, k, v)] for k, v in labels.items()]
        if states:
            choices.append([self.keys.tenant_state(tenant, s) for s in sorted(set(states))])
        if not choices:
            return [self.keys.tenant_jobs(tenant)]
        if len(choices) == 1:
            return choices[0]
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys in choices:
                for key in keys:
                    pipe.zcard(key)
            sizes = iter(await pipe.execute())
        counted = [(sum(next(sizes) for _ in keys), keys) for keys in choices]
        size, keys = min(counted, key=lambda c: c[0])
        return keys if size else []

    async def _newest_ids(self, sources: builtins.list[str], upper: str, count: int) -> builtins.list[str]:
        """The ``count`` newest ids below ``upper`` in the union of ``sources``."""
        if len(sources) == 1:
            found = await self.redis.zrevrangebylex(sources[0], upper, "-", start=0, num=count)
        else:
            # A page from each, merged: the union's newest ``count`` are each among their own
            # index's newest ``count``.
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in sources:
                    pipe.zrevrangebylex(key, upper, "-", start=0, num=count)
                found = {i for page in await pipe.execute() for i in page}
        ids = sorted((_text(i) for i in found), reverse=True)
        return ids[:count]

    async def backfill_indexes(self, batch: int = 500) -> int:
        """Puts every job recorded before the state and label indexes into them, once (a
        version key under the prefix records that it ran); returns the jobs read. Safe to run
        again, and beside servers that create and move jobs meanwhile."""
        if int(await self.redis.get(self.keys.index_version()) or 0) >= INDEX_VERSION:
            return 0
        seen = 0
        async for job_keys in self._scan_batches(self.keys.job(""), batch):
            seen += await self._backfill_batch(job_keys)
        await self.redis.set(self.keys.index_version(), INDEX_VERSION)
        return seen

    async def _scan_batches(self, prefix: str, batch: int) -> AsyncIterator[builtins.list[bytes]]:
        """The keys that start with ``prefix``, in lists of at most ``batch``."""
        keys: builtins.list[bytes] = []
        async for key in self.redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
            keys.append(key)
            if len(keys) >= batch:
                yield keys
                keys = []
        if keys:
            yield keys

    async def persist_idempotency_keys(self, batch: int = 500) -> int:
        """Takes the expiry off the idempotency keys of jobs and sweeps recorded when keys
        expired after 7 days (they now last as long as their job or sweep), once (a version
        key under the prefix records that it ran); returns the keys changed."""
        if int(await self.redis.get(self.keys.idempotency_version()) or 0) >= IDEMPOTENCY_VERSION:
            return 0
        changed = 0
        for prefix in (self.keys.job(""), self.keys.sweep("")):
            async for keys in self._scan_batches(prefix, batch):
                changed += await self._persist_keys([k for k in keys if not k.endswith(b":lock")])  # not a sweep's lock
        await self.redis.set(self.keys.idempotency_version(), IDEMPOTENCY_VERSION)
        return changed

    async def backfill_pins(self, batch: int = 500) -> int:
        """Pins the model and dataset of every job recorded before jobs pinned their inputs,
        while it has not ended, and the base's of every sweep still driven, once (a version
        key under the prefix records that it ran): a DeleteArtifact or the retention then no
        longer takes an input from under a job queued before an upgrade. Returns the jobs and
        sweeps pinned. Safe to run again, and beside servers that create and end jobs: a pin
        of a job or sweep that ended meanwhile is dropped by the next removal that reads it."""
        if int(await self.redis.get(self.keys.pins_version()) or 0) >= PINS_VERSION:
            return 0
        pinned = 0
        async for job_keys in self._scan_batches(self.keys.job(""), batch):
            pinned += await self._pin_batch(job_keys)
        for raw in await self.redis.smembers(self.keys.active_sweeps()):
            sweep_id = _text(raw)
            tenant, data = await self.redis.hmget(self.keys.sweep(sweep_id), "tenant", "sweep")
            if tenant is None or data is None:
                continue  # deleted meanwhile
            inputs = job_inputs(pb.Sweep.FromString(data).spec.base)
            async with self.redis.pipeline(transaction=False) as pipe:
                for artifact_id in inputs:
                    pipe.sadd(self.keys.pins(_text(tenant), artifact_id), f"sweep:{sweep_id}")
                pinned += any(await pipe.execute())
        await self.redis.set(self.keys.pins_version(), PINS_VERSION)
        return pinned

    async def _pin_batch(self, job_keys: builtins.list[bytes]) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in job_keys:
                pipe.hmget(key, "tenant", "pins", "job")
            records = await pipe.execute(raise_on_error=False)
        start = len(self.keys.job(""))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, record in zip(job_keys, records, strict=True):
                if not isinstance(record, list) or None in (record[0], record[2]) or record[1] is not None:
                    continue  # not a job's record, deleted meanwhile, or pinned when recorded
                tenant, _, data = record
                job_id = key.decode()[start:]
                pins = [self.keys.pins(_text(tenant), a) for a in job_inputs(pb.Job.FromString(data).spec)]
                await self._backfill_pins(keys=[key, *pins], args=[job_id, _ACTIVE_LIST], client=pipe)
            return sum(await pipe.execute())

    async def _persist_keys(self, records: builtins.list[bytes]) -> int:
        if not records:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in records:
                pipe.hget(key, "idem")
            keys = [k for k in await pipe.execute(raise_on_error=False) if isinstance(k, bytes) and k]
        if not keys:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.persist(key)
            return sum(1 for done in await pipe.execute() if done)

    async def _backfill_batch(self, job_keys: builtins.list[bytes]) -> int:
        if not job_keys:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in job_keys:
                pipe.hmget(key, "tenant", "state", "job")
            records = await pipe.execute()
        start = len(self.keys.job(""))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, (tenant, state, data) in zip(job_keys, records, strict=True):
                if tenant is None or state is None or data is None:
                    continue  # deleted meanwhile
                job_id, owner = key.decode()[start:], tenant.decode()
                index = self.keys.tenant_state(owner, int(state))
                await self._backfill(keys=[key, index], args=[state, job_id], client=pipe)
                for k, v in pb.Job.FromString(data).labels.items():
                    pipe.zadd(self.keys.tenant_label(owner, k, v), {job_id: 0})
            await pipe.execute()
        return len(job_keys)

    async def read_events(self, job_id: str, after: str, block_ms: int | None) -> builtins.list[pb.JobEvent]:
        """Events after id ``after`` ('' = from the start), waiting up to ``block_ms``."""
        key = self.keys.events(job_id)
        if block_ms is None:
            if after == LAST_STREAM_ID:
                return []  # nothing comes after it (and Redis refuses it as an exclusive start)
            start = f"({after}" if after else "-"
            return [decode_event(i, f) for i, f in await self.redis.xrange(key, start, "+", count=1000)]
        reply = await self.redis.xread({key: after or "0-0"}, count=1000, block=block_ms)
        return [decode_event(i, f) for _, entries in reply for i, f in entries]

    async def read_streams(
        self, cursors: dict[str, str], wake_key: str, wake_cursor: str, block_ms: int
    ) -> dict[str | None, builtins.list[tuple[str, dict]]]:
        """One blocking read of many jobs' event streams (job id -> entries after its cursor)
        and of a wake-up stream (under the key None); raw entries, ids as text."""
        streams = {self.keys.events(job_id): after for job_id, after in cursors.items()}
        streams[wake_key] = wake_cursor
        reply = await self.redis.xread(streams, count=1000, block=block_ms)
        out: dict[str | None, builtins.list[tuple[str, dict]]] = {}
        prefix = len(self.keys.events(""))
        for key, entries in reply.items() if isinstance(reply, dict) else reply:
            key = _text(key)
            job_id = None if key == wake_key else key[prefix:]
            out[job_id] = [(_text(i), f) for i, f in entries]
        return out

    async def wake(self, wake_key: str, ttl_s: int = 24 * 3600) -> None:
        """Wakes the blocking read that follows ``wake_key``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(wake_key, {"w": 1}, maxlen=1, approximate=False)
            pipe.expire(wake_key, ttl_s)
            await pipe.execute()

    # -- retention ---------------------------------------------------------------------

    async def expired_jobs(self, ended_before: float, limit: int = 500) -> builtins.list[str]:
        """Ids of jobs that ended before ``ended_before`` (unix s), oldest first."""
        ids = await self.redis.zrangebyscore(self.keys.finished(), "-inf", ended_before, start=0, num=limit)
        return [_text(i) for i in ids]

    async def delete_job(self, job_id: str) -> None:
        """Removes an ended job: its record, events, index entries and idempotency key."""
        tenant, idem, data = await self.redis.hmget(self.keys.job(job_id), "tenant", "idem", "job")
        if idem and (await self.redis.get(idem)) == job_id.encode():
            await self.redis.delete(idem)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(
                self.keys.job(job_id),
                self.keys.events(job_id),
                self.keys.cancel(job_id),
                self.keys.lost(job_id),
                self.keys.staged(job_id),
            )
            pipe.zrem(self.keys.finished(), job_id)
            pipe.zrem(self.keys.running(), job_id)
            pipe.zrem(self.keys.unsent(), job_id)
            if tenant:
                owner = tenant.decode()
                pipe.zrem(self.keys.tenant_jobs(owner), job_id)
                for state in STATES:  # every state's: an entry left behind would never go
                    pipe.zrem(self.keys.tenant_state(owner, state), job_id)
                for k, v in (pb.Job.FromString(data).labels if data else {}).items():
                    pipe.zrem(self.keys.tenant_label(owner, k, v), job_id)
            await pipe.execute()

    async def expired_artifacts(
        self, created_before: float, limit: int = 500, start: int = 0
    ) -> builtins.list[tuple[str, str]]:
        """(tenant, artifact id) of records created before ``created_before`` (unix s; one
        created at that very time is not listed, as :meth:`expire_artifact` keeps it), oldest
        first, from the ``start``-th (past those a job still reads, which stay listed)."""
        members = await self.redis.zrangebyscore(
            self.keys.artifacts_by_time(), "-inf", f"({created_before!r}", start=start, num=limit
        )
        out = []
        for member in members:
            text = _text(member)
            out.append((text[65:], text[:64]))
        return out

    async def expire_artifact(self, tenant: str, artifact_id: str, created_before: float) -> tuple[bool, bool]:
        """Removes one tenant's record of an artifact if it was still created before
        ``created_before`` (the retention leaves one written again since it looked): whether it
        removed it, and whether no record of the artifact is left (its bytes may go). Raises
        ArtifactInUse, leaving it, while a job that has not ended (or a sweep) reads it."""
        removed = await _drive_async(
            self._drop_artifact(tenant, artifact_id, created_before=repr(created_before), unless_read=True)
        )
        return removed, bool(await self.unowned([artifact_id]))

    async def delete_artifact(self, tenant: str, artifact_id: str, *, release: bool = False) -> bool:
        """Removes one tenant's record of an artifact; True when no record of it is left
        (its bytes may go). With ``release``, such bytes are marked for the next housekeeping
        however old they are (blobs from before the job store's birth are otherwise kept).
        Raises ArtifactInUse while a job that has not ended reads it."""
        await _drive_async(self._drop_artifact(tenant, artifact_id, unless_read=True))
        last = bool(await self.unowned([artifact_id]))
        if last and release:
            await self.release(artifact_id)
        return last

    async def release(self, artifact_id: str) -> None:
        """Marks bytes whose last record went for the housekeeping, however old they are (kept
        in Redis: a pass stopped before it deleted them leaves them to the next)."""
        await self.redis.sadd(self.keys.released(), artifact_id)

    async def released_ids(self) -> set[str]:
        return {i.decode() for i in await self.redis.smembers(self.keys.released())}

    async def forget_released(self, artifact_ids: Iterable[str]) -> None:
        ids = list(artifact_ids)
        if ids:
            await self.redis.srem(self.keys.released(), *ids)

    async def stored_bytes(self, tenant: str) -> int:
        """Bytes of the artifacts the tenant holds records of. The count changes with the
        records, in the same scripts; a deployment from before it makes it from the records
        on first read, in one script too."""
        keys, args = self._count_args(tenant)
        return int(await self._count_bytes(keys=keys, args=args))

    def _count_args(self, tenant: str) -> tuple[builtins.list[str], builtins.list[str]]:
        """KEYS and ARGV of the count (``_COUNT``) that ``_COUNT_BYTES`` and ``_RESERVE`` open with."""
        return [self.keys.tenant_bytes(tenant), self.keys.tenant_artifacts(tenant)], [
            self.keys.tenant_artifact(tenant, "")
        ]

    async def reserve_bytes(
        self, tenant: str, token: str, size: int, quota: int, hold_s: float
    ) -> tuple[bool, int, int]:
        """Reserves ``size`` bytes in all for the upload ``token`` if the tenant's stored bytes,
        the other uploads' reservations and ``size`` stay within ``quota``; the reservation
        holds ``hold_s`` unless renewed. Returns (reserved, stored bytes, others' reservations)."""
        keys, args = self._count_args(tenant)
        ok, stored, others = await self._reserve(
            keys=[*keys, self.keys.tenant_reserved(tenant)], args=[*args, token, size, quota, _ms(hold_s)]
        )
        return bool(ok), int(stored), int(others)

    async def renew_bytes(self, tenant: str, token: str, size: int, hold_s: float) -> bool:
        """Keeps the upload ``token``'s reservation of ``size`` bytes for ``hold_s`` more; False
        when it had lapsed (it is not renewed: the upload must reserve again)."""
        return bool(await self._renew(keys=[self.keys.tenant_reserved(tenant)], args=[token, size, _ms(hold_s)]))

    async def release_bytes(self, tenant: str, token: str) -> None:
        """Ends the upload ``token``'s reservation (its bytes count in its record, if any)."""
        await self.redis.hdel(self.keys.tenant_reserved(tenant), token)

    async def born(self) -> float:
        """When this job store first held data (unix s), recorded once. A store wiped or lost
        and started afresh is born again, later than every blob written before."""
        key = self.keys.born()
        await self.redis.set(key, repr(time.time()), nx=True)
        value = await self.redis.get(key)
        return float(value) if value is not None else time.time()

    async def deployment_id(self) -> str:
        """This job store's id (a random one, set once; a store wiped gets a new one)."""
        await self.redis.set(self.keys.deployment(), uuid.uuid4().hex, nx=True)
        value = await self.redis.get(self.keys.deployment())
        return _text(value) if value is not None else ""

    async def unowned(self, artifact_ids: builtins.list[str]) -> builtins.list[str]:
        """The ids no record of any tenant points to."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for artifact_id in artifact_ids:
                pipe.exists(self.keys.artifact_owners(artifact_id), self.keys.artifact(artifact_id))
            counts = await pipe.execute()
        return [a for a, n in zip(artifact_ids, counts, strict=True) if not n]

    async def put_artifact(
        self, tenant: str, record: ArtifactRecord, *, refuse: Iterable[int] = (), keep: Iterable[int] = ()
    ) -> bool:
        """Writes the tenant's record of an artifact; True when the tenant had none.
        ``refuse`` and ``keep``: as in :meth:`JobStore._put_artifact`."""
        return await _drive_async(self._put_artifact(tenant, record, refuse=refuse, keep=keep))

    async def take_back_exports(self, job_id: str, tenant: str) -> int:
        """Removes every export record the job staged (see :meth:`JobStore.take_back_exports`)."""
        return await _drive_async(self._take_back_exports(job_id, tenant, None))

    async def get_artifact(self, tenant: str, artifact_id: str) -> ArtifactRecord:
        return await _drive_async(self._get_artifact(tenant, artifact_id))

    async def artifacts_page(
        self, tenant: str, kind: int, after: tuple[float, str] | None, size: int
    ) -> tuple[builtins.list[ArtifactRecord], tuple[float, str] | None]:
        """Up to ``size`` of the tenant's records (of ``kind``; 0 = every kind), newest first
        by when the tenant first stored each (a record written again keeps its place, so a
        listing reaches every record held throughout), the same time by id descending, after
        the record ``after`` (that time and its id) if given; and where the next page starts
        (None at the end). Read through the tenant's time
        index: a page costs its own records, whatever the tenant holds. Records without their
        ``info`` (a model's summary is the bulk of a record: a listing neither reads nor parses
        it); a shared record from before per-tenant records where the tenant has no own."""
        index = self.keys.tenant_artifacts_by_time(tenant, kind)
        if after is None:
            await self._keep_indexed(tenant)
            found = await self.redis.zrevrange(index, 0, size, withscores=True)
        else:
            created, last = after
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrevrangebyscore(index, created, created, withscores=True)  # ids descending
                pipe.zrevrangebyscore(index, f"({created!r}", "-inf", start=0, num=size + 1, withscores=True)
                same, older = await pipe.execute()
            found = [(i, t) for i, t in same if _text(i) < last] + older
        page = [(_text(i), float(t)) for i, t in found[:size]]
        records = await self._listed(tenant, [i for i, _ in page])
        return records, ((page[-1][1], page[-1][0]) if len(found) > size else None)

    _LISTED = ("kind", "format", "filename", "size", "created", "job", "crc32")

    async def _listed(self, tenant: str, ids: builtins.list[str]) -> builtins.list[ArtifactRecord]:
        """The records of ``ids`` in that order, without ``info``; those gone meanwhile (a
        DeleteArtifact, the retention) left out. One read of each record, pipelined."""
        fields = self._LISTED
        async with self.redis.pipeline(transaction=False) as pipe:
            for artifact_id in ids:
                pipe.hmget(self.keys.tenant_artifact(tenant, artifact_id), fields)
            own = await pipe.execute()
        shared_ids = [a for a, values in zip(ids, own, strict=True) if values[0] is None]
        async with self.redis.pipeline(transaction=False) as pipe:
            for artifact_id in shared_ids:
                pipe.hmget(self.keys.artifact(artifact_id), fields)
            shared = dict(zip(shared_ids, await pipe.execute(), strict=True))
        records = []
        for artifact_id, values in zip(ids, own, strict=True):
            if values[0] is None:
                values = shared[artifact_id]
            if values[0] is None:
                continue
            raw = {name.encode(): value for name, value in zip(fields, values, strict=True) if value is not None}
            records.append(ArtifactRecord.from_mapping(artifact_id, {**raw, b"info": b"{}"}))
        return records

    async def backfill_artifact_index(self) -> int:
        """Puts every artifact record written before the tenants' time indexes into them, once
        (a version key under the prefix records that it ran); returns the records read. Safe
        to run again, and beside servers that write and remove records meanwhile."""
        if int(await self.redis.get(self.keys.artifact_index_version()) or 0) >= ARTIFACT_INDEX_VERSION:
            return 0
        head, tail = self.keys.tenant_artifacts("|").split("|")
        seen = 0
        async for key in self.redis.scan_iter(match=_glob_escape(head) + "*" + _glob_escape(tail), count=1000):
            if _text(await self.redis.type(key)) != "set":
                continue  # a job index whose label ends so (those are sorted sets)
            seen += await self._index_tenant(_text(key)[len(head) : -len(tail)])
        await self.redis.set(self.keys.artifact_index_version(), ARTIFACT_INDEX_VERSION)
        return seen

    async def _keep_indexed(self, tenant: str) -> None:
        """Indexes the tenant's records again when its set of artifacts and its index by time
        disagree in size: a process from before the index (a rolling upgrade: an old worker
        storing its job's exports, an old server removing a record) wrote or removed records
        after the backfill, which never runs again. Two counts a listing; the set's records
        when they differ."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(self.keys.tenant_artifacts(tenant))
            pipe.zcard(self.keys.tenant_artifacts_by_time(tenant))
            held, indexed = await pipe.execute()
        if held != indexed:
            await self._index_tenant(tenant)

    async def _index_tenant(self, tenant: str) -> int:
        """Every record of the tenant in its sets by time, as it is now (:data:`_BACKFILL_ARTIFACT`),
        and no id it holds no record of; returns the records read."""
        held = self.keys.tenant_artifacts(tenant)
        indexes = self._time_keys(tenant)
        ids = [_text(i) for i in await self.redis.smembers(held)]
        listed = {_text(i) for i in await self.redis.zrange(indexes[0], 0, -1)}
        async with self.redis.pipeline(transaction=False) as pipe:
            for artifact_id in ids:
                records = [self.keys.tenant_artifact(tenant, artifact_id), self.keys.artifact(artifact_id)]
                await self._backfill_artifact(
                    keys=[*records, held, *indexes], args=[artifact_id, *ARTIFACT_KINDS], client=pipe
                )
            for artifact_id in listed.difference(ids):
                await self._unindex_artifact(keys=[held, *indexes], args=[artifact_id], client=pipe)
            await pipe.execute()
        return len(ids)

    async def refresh_artifact(self, tenant: str, record: ArtifactRecord) -> bool:
        """Writes the tenant's own record of ``record.id`` again as ``record`` (its file name,
        its creation time) only if it still exists; False when it does not (removed meanwhile,
        or only a shared record from before per-tenant records: its bytes are not counted)."""
        keys = [self.keys.tenant_artifact(tenant, record.id), self.keys.artifacts_by_time(), *self._time_keys(tenant)]
        args = [
            *(record.created, f"{record.id}:{tenant}", record.id),
            self.keys.tenant_artifacts_by_time(tenant, record.kind),
            str(record.kind),
            *record.fields(),
        ]
        return bool(await self._refresh_record(keys=keys, args=args))
