"""Which run of a shared job a worker joins: the one going on, or a new one once it has ended.

A job file's `[cluster]` prefix names the job in Redis for good; each time
the job is run it is a new *run* under it.  The work of a run — its stream
of batches, counters, set of chunks enqueued, results stream, the worker
registry and the controls — lives under `PREFIX:run:N`.  A starting worker
joins run N unless that run has finished: its whole input enqueued, every
batch settled or dead-lettered, and every row collected into the store.
Then it starts run N+1, in one script, so two workers starting together
start one run, not two.

So a rerun behaves as it does in one process: a stopped or drained run is
joined and finished (its batches reclaimed from the workers that left),
and a finished one is followed by a new run that sends only what is not
stored yet (the done set outlives runs) and counts only its own workers.  A
finished run's keys expire after `FINISHED_RUN_KEPT_S`, long enough for a
worker still ending it to read that it is over.

What outlives runs, under the prefix itself: the done set, the keys'
shared budgets, which store is the job's and the collector lease.
"""

from __future__ import annotations

from redis.asyncio import Redis

from engine.cluster.cluster_controls import control_keys
from engine.cluster.job_streams import JobStreams
from engine.cluster.stream_replies import as_int
from engine.cluster.worker_registry import registry_keys

__all__ = ["FINISHED_RUN_KEPT_S", "join_run", "run_counter", "run_prefix"]

FINISHED_RUN_KEPT_S = 3600

# KEYS: the run counter, the run's progress hash, its results stream, then its other keys.
# ARGV: the run asked about, how long a finished run's keys are kept.
# Returns the run to join: the one asked about, a newer one, or a new one if it finished.
_JOIN = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current == 0 then
  redis.call('SET', KEYS[1], 1)
  return 1
end
if current ~= tonumber(ARGV[1]) then
  return current
end
local p = redis.call('HMGET', KEYS[2], 'input_complete', 'entries', 'settled', 'dead')
local backlog = (tonumber(p[2]) or 0) - (tonumber(p[3]) or 0) - (tonumber(p[4]) or 0)
if p[1] == '1' and backlog <= 0 and redis.call('XLEN', KEYS[3]) == 0 then
  for i = 2, #KEYS do
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2]))
  end
  return redis.call('INCR', KEYS[1])
end
return current
"""


def run_counter(prefix: str) -> str:
    """The key holding the number of the job's current run."""
    return f"{prefix}:run"


def run_prefix(prefix: str, run: int) -> str:
    """The prefix of run `run`'s keys (its streams, registry and controls)."""
    return f"{prefix}:run:{run}"


def _run_keys(prefix: str, run: int) -> list[str]:
    scope = run_prefix(prefix, run)
    streams = JobStreams(scope)
    rest = [*streams.keys, *registry_keys(scope), *control_keys(scope)]
    rest.remove(streams.progress)
    rest.remove(streams.results)
    return [streams.progress, streams.results, *rest]


async def join_run(redis: Redis, prefix: str, *, kept_s: int = FINISHED_RUN_KEPT_S) -> int:
    """The number of the job's run this worker joins (a new one if the last has finished)."""
    join = redis.register_script(_JOIN)
    asked = as_int(await redis.get(run_counter(prefix))) or 1
    while True:
        keys = [run_counter(prefix), *_run_keys(prefix, asked)]
        answer = int(await join(keys=keys, args=[asked, kept_s]))
        if answer == asked:
            return answer
        # A newer run: made just now (by this call or another worker's), or while we
        # looked; asked again, it is joined unless it too has finished meanwhile.
        asked = answer
