"""The same text paid for once by a whole cluster: one request per text, a copy per chunk.

As in one process (`engine.pipeline.same_text`), chunks of different
sources with the same text (boilerplate repeated across transcripts or
sites) need one request between them.  In a cluster the chunk sent for a
text — its holder — is answered by whichever worker reads its batch and
stored by the job's collector, so who holds a text and who waits for it
live in Redis under the run's prefix (`JobStreams.texts` and the keys
beside it).  One script decides for a block of chunks *before* they are
batched, so batches stay full and a repeated text saves its share of a
request.

`SharedSameText.to_send` (the batcher's filter, and a cluster crawl's), for
each chunk neither stored nor enqueued before:

- its text is held by nobody: this chunk holds it, and is sent;
- its text is held by a chunk in flight: it waits, encoded, on that
  holder's list (`JobStreams.text_waiting`);
- its text is answered (the holder's result is stored): it goes to the
  results stream as a copy to make, naming the holder and the text.  So
  does a chunk whose text an earlier run of the job answered: the collector
  records each text it stores an answer to in a job-level hash per prompt
  version and model (`answered_texts`), which every worker's claim reads,
  wherever it runs.  The worker beside the store also looks the store itself
  up (`to_send` is given it, as one process does), which finds answers stored
  before the job ran as a cluster; a worker elsewhere does not: its store is
  not the job's, and what it holds the collector could not copy.

A chunk that waits or is copied is marked enqueued (a second reader of the
input adds nothing twice) and counted in the run's chunks.  A holder let go
before it was enqueued (its reader stopped, its site released mid-crawl)
keeps its text: whoever reads it again holds it anew and sends it.  If it
never comes again (a site's page changed before it was crawled again, or
the site was dead-lettered), the chunks waiting on it are handed on once
the crawl is over (`orphaned`): the first holds the text anew and is sent,
the others wait for it.

`TextCopies` is the collector's side.  Once the store has committed a
holder's row, `made_for` marks its text answered (or, the holder failed,
held by nobody) and turns each chunk waiting for it into a copy of the
answer — or, the holder failed for good, into a failure saying so, which
the next run sends again.  (One process sends such chunks at once; a
cluster's workers may all have ended by the time the collector hears of
the failure, so nothing may be enqueued then.)  The waiting lists go, and
the copies are counted, in the transaction that acknowledges the holder's
entry (`settle`): a collector that dies first finds the entries pending
again and copies again, and the store keeps one row a chunk.

Memory in Redis: a field per distinct text of the run and a list per text
in flight that has repeats; the run's keys expire with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from engine.cluster.batch_codec import BatchFormatError, chunk_of_row, decode_chunk, encode_chunk
from engine.cluster.call_coalescer import CallCoalescer
from engine.cluster.job_streams import JobStreams
from engine.cluster.stream_replies import as_text
from engine.pipeline.outcomes import failure_row
from engine.pipeline.records import Chunk, text_key
from engine.pipeline.same_text import StoredAnswers, copy_row
from engine.store.sqlite_store import FailureRow, ResultRow, StoredAnswer

__all__ = [
    "COPIES_FIELD",
    "CopiesMade",
    "LateCopy",
    "SharedSameText",
    "TextCopies",
    "answered_texts",
    "late_copies",
]

COPIES_FIELD = "copies"
"""A results entry's field listing copies to make: `[holder, text key, chunk]` each."""

SEND = 0  # the claim script's decisions: 0 send, 1 wait, 2 copy

LateCopy = tuple[str, str, Chunk]
"""A chunk enqueued once its text was answered: (holder, text key, the chunk)."""

# One asker's chunks, each with its text key and the stored answer to it (or None).
_Ask = list[tuple[Chunk, str, StoredAnswer | None]]

# KEYS: texts, holders, enqueued, done, results, progress, then the job's answered texts
# of each model in the order they serve.  ARGV: the waiting lists' prefix, then id, text
# key, encoded chunk, and the chunk whose stored answer (from an earlier run) serves, or
# '', for each chunk.  Returns each one's decision.
_CLAIM = """
local decisions, copies, kept = {}, {}, 0
for at = 2, #ARGV, 4 do
  local id, key = ARGV[at], ARGV[at + 1]
  local decision = 0
  if redis.call('SISMEMBER', KEYS[4], id) == 0 and redis.call('SISMEMBER', KEYS[3], id) == 0 then
    local holder = redis.call('HGET', KEYS[1], key)
    local earlier = ARGV[at + 3]
    for model = 7, #KEYS do
      if holder or earlier ~= '' then break end
      earlier = redis.call('HGET', KEYS[model], key) or ''
    end
    if earlier ~= '' and not holder then
      holder = '=' .. earlier  -- answered in an earlier run: so for every worker from now
      redis.call('HSET', KEYS[1], key, holder)
    end
    if not holder or holder == id then
      redis.call('HSET', KEYS[1], key, id)
      redis.call('HSET', KEYS[2], id, key)
    else
      redis.call('SADD', KEYS[3], id)
      kept = kept + 1
      if string.sub(holder, 1, 1) == '=' then
        decision = 2
        copies[#copies + 1] = '[' .. cjson.encode(string.sub(holder, 2)) .. ','
                              .. cjson.encode(key) .. ',' .. ARGV[at + 2] .. ']'
      else
        decision = 1
        redis.call('RPUSH', ARGV[1] .. holder, ARGV[at + 2])
      end
    end
  end
  decisions[#decisions + 1] = decision
end
if #copies > 0 then
  redis.call('XADD', KEYS[5], '*', 'v', '1', 'copies', '[' .. table.concat(copies, ',') .. ']')
end
if kept > 0 then
  redis.call('HINCRBY', KEYS[6], 'chunks', kept)
end
return decisions
"""

# KEYS: texts, holders.  ARGV: the waiting lists' prefix, then a stored chunk's id and
# '1' (answered) or '0' (failed) for each.  For each that holds a text: marks the text
# answered (or held by nobody) and returns the id with the chunks waiting for it.
_WAITING_FOR = """
local out = {}
for at = 2, #ARGV, 2 do
  local id = ARGV[at]
  local key = redis.call('HGET', KEYS[2], id)
  if key then
    if ARGV[at + 1] == '1' then
      redis.call('HSET', KEYS[1], key, '=' .. id)
    elseif redis.call('HGET', KEYS[1], key) == id then
      redis.call('HDEL', KEYS[1], key)
    end
    out[#out + 1] = {id, redis.call('LRANGE', ARGV[1] .. id, 0, -1)}
  end
end
return out
"""


# KEYS: texts, holders, enqueued, done, progress.  ARGV: the waiting lists' prefix.
# Every holder neither enqueued nor stored lets its text go; the chunks that waited for
# it (encoded) are returned, uncounted and no longer marked enqueued, to be asked anew.
_ORPHANED = """
local out, held = {}, redis.call('HGETALL', KEYS[2])
for at = 1, #held, 2 do
  local id, key = held[at], held[at + 1]
  if redis.call('SISMEMBER', KEYS[3], id) == 0 and redis.call('SISMEMBER', KEYS[4], id) == 0 then
    redis.call('HDEL', KEYS[2], id)
    if redis.call('HGET', KEYS[1], key) == id then
      redis.call('HDEL', KEYS[1], key)
    end
    local list = ARGV[1] .. id
    for _, encoded in ipairs(redis.call('LRANGE', list, 0, -1)) do
      out[#out + 1] = encoded
      redis.call('SREM', KEYS[3], cjson.decode(encoded)[1])
    end
    redis.call('DEL', list)
  end
end
if #out > 0 then
  redis.call('HINCRBY', KEYS[5], 'chunks', -#out)
end
return out
"""


def answered_texts(job_prefix: str, prompt_version: str, model: str) -> str:
    """The job-level hash of each text an answer from `model` at `prompt_version` is
    stored for → the chunk it was stored under (kept across runs, like the done set)."""
    return f"{job_prefix}:answered:{prompt_version}:{model}"


class SharedSameText:
    """The batcher's `TextsToSend` in a cluster: which chunks of a block need a request,
    decided for the whole run in Redis (see the module).  `done_set` is the job's set
    of stored chunk ids (the work queue's); `job_prefix`, when given, the job's own
    prefix, under which the texts earlier runs answered are kept (`answered_texts`);
    `beside_store`: this worker's store is the job's, so its answers serve."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        done_set: str,
        *,
        prompt_version: str,
        models: Iterable[str],
        job_prefix: str | None = None,
        beside_store: bool = True,
    ) -> None:
        self.streams = JobStreams(prefix)
        self._done_set = done_set
        self._beside_store = beside_store
        self._version = prompt_version
        self._models = list(dict.fromkeys(models))
        self._answered = (
            []
            if job_prefix is None
            else [answered_texts(job_prefix, prompt_version, m) for m in self._models]
        )
        self._claim = redis.register_script(_CLAIM)
        self._orphaned = redis.register_script(_ORPHANED)
        # A crawl asks for every page: asks made while a call is out go in the next.
        self._claims: CallCoalescer[_Ask, list[int]] = CallCoalescer(self._claim_all)

    async def to_send(
        self, chunks: Sequence[Chunk], stored: StoredAnswers | None = None
    ) -> list[Chunk]:
        """Of `chunks`, the ones whose text needs a request; the others wait for the
        answer to their text, or are copied from it — from this run's answers, or
        from `stored` (the job's store, beside it) when it answered their text."""
        if not chunks:
            return []
        keys = [text_key(chunk.text) for chunk in chunks]
        answered: dict[str, StoredAnswer] = {}
        if stored is not None and self._beside_store:
            answered = await stored.answers_for(keys, self._version, self._models)
        ask = [(chunk, key, answered.get(key)) for chunk, key in zip(chunks, keys, strict=True)]
        decisions = await self._claims.ask(ask)
        return [chunk for chunk, d in zip(chunks, decisions, strict=True) if d == SEND]

    async def orphaned(self) -> list[Chunk]:
        """Once every chunk of the run is enqueued (a crawl is over): the chunks waiting for
        a text whose holder never was — its site let go here and its page changed before
        it was crawled again, or the site dead-lettered.  They are no longer counted nor
        marked enqueued; ask `to_send` for them again (the first holds their text)."""
        s = self.streams
        encoded = await self._orphaned(
            keys=[s.texts, s.text_holders, s.enqueued, self._done_set, s.progress],
            args=[s.text_waiting("")],
        )
        return _chunks(encoded)

    async def _claim_all(self, asks: list[_Ask]) -> list[list[int]]:
        """One script call deciding for every chunk of `asks`, in order; each ask's
        decisions.  (An asker cancelled meanwhile may leave a text held by a chunk it
        never enqueues: whoever reads that chunk again — its site taken over, the input
        read again — holds it anew.)"""
        s = self.streams
        args: list[str] = [s.text_waiting("")]
        for ask in asks:
            for chunk, key, answer in ask:
                args += (chunk.id, key, encode_chunk(chunk), answer.chunk_id if answer else "")
        keys = [s.texts, s.text_holders, s.enqueued, self._done_set, s.results, s.progress]
        decisions = [int(d) for d in await self._claim(keys=keys + self._answered, args=args)]
        answers, at = [], 0
        for ask in asks:
            answers.append(decisions[at : at + len(ask)])
            at += len(ask)
        return answers


@dataclass(slots=True)
class CopiesMade:
    """What the collector stores for the texts one commit answered (`TextCopies.made_for`),
    and what its acknowledgement then settles (`TextCopies.settle`)."""

    rows: list[ResultRow | FailureRow] = field(default_factory=list)
    holders: list[str] = field(default_factory=list)  # holders let go
    waited: list[str] = field(default_factory=list)  # those of them some chunk waited for
    copied: list[str] = field(default_factory=list)  # chunks stored as copies
    unanswered: list[str] = field(default_factory=list)  # stored failed: their holder failed
    # Texts answered now, by model (text key → chunk): what later runs may copy.
    answered: dict[str, dict[FieldT, EncodableT]] = field(default_factory=dict)


class TextCopies:
    """The collector's side of `SharedSameText` for run `prefix`: copies of stored answers
    for the chunks that waited for them, or were enqueued once the answer was stored.

    `prompt_version` and `models` are the job's: an answer stored under them serves.
    With `job_prefix`, each text answered is recorded for later runs (`answered_texts`).
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        prompt_version: str,
        models: Iterable[str],
        job_prefix: str | None = None,
    ) -> None:
        self.streams = JobStreams(prefix)
        self._job_prefix = job_prefix
        self._version = prompt_version
        self._models = list(dict.fromkeys(models))
        self._waiting_for = redis.register_script(_WAITING_FOR)

    async def made_for(
        self,
        results: Sequence[ResultRow],
        failures: Sequence[FailureRow],
        late: Sequence[LateCopy],
        store: StoredAnswers,
        run_id: int,
    ) -> CopiesMade:
        """The rows for the chunks waiting on the holders among `results` and `failures`
        (all committed now), and for `late` copies of answers the store holds; rows
        are stamped with `run_id` (the collector's run in the store)."""
        made = CopiesMade()
        answered = {row.chunk_id: row for row in results}
        if self._job_prefix is not None:
            for row in results:
                key = row.text_key or text_key(row.text)
                made.answered.setdefault(row.model, {})[key] = row.chunk_id
        failed = {row.chunk_id: row for row in failures if row.chunk_id not in answered}
        if answered or failed:
            args = [self.streams.text_waiting("")]
            for chunk_id in answered:
                args += (chunk_id, "1")
            for chunk_id in failed:
                args += (chunk_id, "0")
            keys = [self.streams.texts, self.streams.text_holders]
            for holder_id, waiting in await self._waiting_for(keys=keys, args=args):
                holder = as_text(holder_id)
                made.holders.append(holder)
                chunks = _chunks(waiting)
                if chunks:
                    made.waited.append(holder)
                result = answered.get(holder)
                if result is not None:
                    answer = StoredAnswer(holder, result.model, result.provider, result.result_json)
                    self._copy(made, answer, run_id, chunks)
                else:
                    self._fail(made, failed[holder], run_id, chunks)
        if late:
            await self._copy_late(made, late, store, run_id)
        return made

    def settle(self, pipe: Pipeline, made: CopiesMade) -> None:
        """Add to the collector's acknowledgement: the waiting lists resolved, the holders
        let go, the copies and the unanswered counted (sets: a repeat counts once)."""
        s = self.streams
        # Only the lists that exist: most texts are met once, and a command per chunk was
        # most of the collector's Redis work.  (`made_for` stopped them growing.)
        if made.waited:
            pipe.delete(*(s.text_waiting(holder) for holder in made.waited))
        if made.holders:
            pipe.hdel(s.text_holders, *made.holders)
        if made.copied:
            pipe.sadd(s.texts_copied, *made.copied)
        if made.unanswered:
            pipe.sadd(s.texts_unanswered, *made.unanswered)
        if self._job_prefix is not None:
            for model, texts in made.answered.items():
                pipe.hset(answered_texts(self._job_prefix, self._version, model), mapping=texts)

    # ------------------------------------------------------------ internals
    def _copy(
        self, made: CopiesMade, answer: StoredAnswer, run_id: int, chunks: Sequence[Chunk]
    ) -> None:
        for chunk in chunks:
            made.rows.append(copy_row(answer, chunk, self._version, run_id))
            made.copied.append(chunk.id)

    def _fail(
        self, made: CopiesMade, holder: FailureRow, run_id: int, chunks: Sequence[Chunk]
    ) -> None:
        reason = f"the chunk sent for its text ({holder.chunk_id}) failed: {holder.reason}"
        for chunk in chunks:
            made.rows.append(
                failure_row(chunk, holder.prompt_version, holder.model, reason, 0, run_id)
            )
            made.unanswered.append(chunk.id)

    async def _copy_late(
        self,
        made: CopiesMade,
        late: Sequence[LateCopy],
        store: StoredAnswers,
        run_id: int,
    ) -> None:
        keys = {key for _holder, key, _chunk in late}
        found = await store.answers_for(keys, self._version, self._models)
        for holder, key, chunk in late:
            answer = found.get(key)
            if answer is not None:
                self._copy(made, answer, run_id, (chunk,))
                continue
            # The holder's answer was stored before its text was marked answered: only
            # another store, or a prompt or models changed mid-run, lands here.
            reason = f"the answer of the chunk sent for its text ({holder}) is not in the store"
            model = self._models[0] if self._models else ""
            made.rows.append(failure_row(chunk, self._version, model, reason, 0, run_id))
            made.unanswered.append(chunk.id)


def late_copies(value: str) -> list[LateCopy]:
    """A results entry's `copies` field (`COPIES_FIELD`); `BatchFormatError` if it is
    not one."""
    try:
        return [(str(h), str(k), chunk_of_row(row)) for h, k, row in json.loads(value)]
    except (TypeError, ValueError) as exc:
        raise BatchFormatError(f"unreadable copies entry: {exc!r}") from exc


def _chunks(encoded: Iterable[Any]) -> list[Chunk]:
    # Each pushed by the claim script as `encode_chunk` made it.
    return [decode_chunk(item) for item in encoded]
