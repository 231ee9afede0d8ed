"""The same text is paid for once: one request per text, a copy of its result per chunk.

A chunk's id includes its source, so identical text in two sources
(boilerplate repeated across transcripts, a mirrored page) is two chunks.
Under one prompt version and model they are sent as the same words
(`records.text_key`), so one answer serves both.  Between the batcher and
the outcomes, for each chunk that still needs a result:

- its text already has an answer — committed by an earlier run or earlier
  in this one (`Store.answers_for`), or answered in this run and not yet
  committed (the recent answers kept here) — so it is stored at once as a
  copy of that answer, under its own chunk id and source, with no request
  (`ResultRow.copied_from`; counted as cached when committed);
- its text is in flight now under another chunk (the holder): it waits for
  that answer and is stored as its copy when it comes;
- else it is sent, and holds its text until its answer or failure.

If the holder fails for good, its waiting chunks are sent themselves, so a
chunk is never lost to another's failure.  Memory follows what is in flight,
not the input: a text's waiting chunks are let go when its answer is stored
or it fails, at most `max_waiting` chunks wait at once (past that a
duplicate is simply sent), and the recent answers are bounded by how many
rows the store may hold uncommitted — an answer leaves them only once the
store can answer for it.

Answers embed the chunk id (`{"id": ..., ...}`, as `prompt.parse_answer`
maps entries to chunks): a copy carries its own chunk's id.  In one
process; a cluster decides the same in Redis, and its collector makes the
copies (`engine.cluster.shared_same_text`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.pipeline.held_work import HeldWork
from engine.pipeline.records import Chunk, text_key
from engine.store.sqlite_store import ResultRow, StoredAnswer

DEFAULT_MAX_WAITING = 10_000
"""Chunks that may wait for another chunk's answer at once (each holds its text)."""

# The same encoding the outcomes store answers with.
_RESULT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class CopySink(Protocol):
    """Where copied results go (`engine.store.sqlite_store.Store`)."""

    async def put_result(self, row: ResultRow) -> None: ...


class StoredAnswers(Protocol):
    """Where committed answers are looked up by text (`Store.answers_for`)."""

    async def answers_for(
        self, text_keys: Iterable[str], prompt_version: str, models: Sequence[str]
    ) -> dict[str, StoredAnswer]: ...


@dataclass(slots=True)
class _Holding:
    """A text in flight: the chunk sent for it, and the chunks waiting for its answer."""

    holder: str
    waiting: list[Chunk]


def answer_for(result_json: str, chunk_id: str) -> str:
    """`result_json` as the answer for `chunk_id`: the id it names is that chunk's."""
    try:
        entry = json.loads(result_json)
    except ValueError:
        return result_json  # not JSON: it names no id, and is kept as it was
    if isinstance(entry, dict) and "id" in entry:
        entry["id"] = chunk_id
        return _RESULT_JSON.encode(entry)
    return result_json


class SameText:
    """Decides, per chunk, whether its text needs a request (see the module docstring).

    `rows` takes the copies; `held` is told when a copied chunk is let go;
    `models` are the job's (an answer from any of them serves, as the
    batcher counts a result from any of them as done); `remember` bounds the
    recent answers kept here — at least the rows the store may hold uncommitted.
    """

    def __init__(
        self,
        rows: CopySink,
        held: HeldWork,
        *,
        run_id: int,
        prompt_version: str,
        models: Iterable[str],
        remember: int,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        if remember < 1 or max_waiting < 0:
            raise ValueError("remember must be >= 1 and max_waiting >= 0")
        self._rows = rows
        self._held = held
        self._run_id = run_id
        self._version = prompt_version
        self._models = list(dict.fromkeys(models))
        self._remember = remember
        self._max_waiting = max_waiting
        self._in_flight: dict[str, _Holding] = {}
        # Each sent chunk's text key, worked out once here (a hash of its folded
        # text) and not again when it is answered, failed and stored.
        self._sent_keys: dict[str, str] = {}
        self._recent: OrderedDict[str, StoredAnswer] = OrderedDict()
        self.waiting = 0  # chunks waiting for another chunk's answer now

    @property
    def texts_in_flight(self) -> int:
        """Texts sent and not yet answered or failed."""
        return len(self._in_flight)

    async def to_send(self, chunks: Sequence[Chunk], stored: StoredAnswers) -> list[Chunk]:
        """Of `chunks` (none done yet), the ones that need a request; the others are
        stored as copies now or wait for the answer to their text."""
        if not chunks:
            return []
        keys = [text_key(chunk.text) for chunk in chunks]
        committed = await stored.answers_for(keys, self._version, self._models)
        sending: list[Chunk] = []
        # From here each decision is made without a wait between looking and
        # claiming, so no answer slips between the two.
        for chunk, key in zip(chunks, keys, strict=True):
            answer = committed.get(key) or self._recent.get(key)
            if answer is not None:
                await self._copy(answer, chunk)
                continue
            holding = self._in_flight.get(key)
            if holding is None:
                self._in_flight[key] = _Holding(chunk.id, [])
            elif self.waiting < self._max_waiting:
                holding.waiting.append(chunk)
                self.waiting += 1
                continue
            # Else past the bound: pay twice rather than hold more.
            sending.append(chunk)
            self._sent_keys[chunk.id] = key
        return sending

    def key_of(self, chunk: Chunk) -> str:
        """`chunk`'s text key (`text_key`): kept since it was sent, or worked out."""
        return self._sent_keys.get(chunk.id) or text_key(chunk.text)

    async def answered(self, chunk: Chunk, result_json: str, model: str, provider: str) -> None:
        """`chunk`'s result (`result_json`, as stored) was handed to the store: the
        chunks waiting for its text are stored as copies, and later ones will be."""
        key = self._sent_keys.pop(chunk.id, None) or text_key(chunk.text)
        answer = StoredAnswer(chunk.id, model, provider, result_json)
        self._recent[key] = answer
        self._recent.move_to_end(key)
        while len(self._recent) > self._remember:
            self._recent.popitem(last=False)
        holding = self._in_flight.pop(key, None)
        if holding is None:
            return
        self.waiting -= len(holding.waiting)
        for waiting in holding.waiting:
            await self._copy(answer, waiting)

    def failed(self, chunk: Chunk) -> list[Chunk]:
        """`chunk` failed for good: the chunks that waited for its text, to be sent themselves."""
        key = self._sent_keys.pop(chunk.id, None) or text_key(chunk.text)
        holding = self._in_flight.get(key)
        if holding is None or holding.holder != chunk.id:
            return []  # it held nothing (a duplicate sent past the bound)
        del self._in_flight[key]
        self.waiting -= len(holding.waiting)
        return holding.waiting

    async def _copy(self, answer: StoredAnswer, chunk: Chunk) -> None:
        await self._rows.put_result(copy_row(answer, chunk, self._version, self._run_id))
        self._held.let_go(chunk.id)  # cached is counted on commit


def copy_row(answer: StoredAnswer, chunk: Chunk, prompt_version: str, run_id: int) -> ResultRow:
    """`chunk`'s result as a copy of `answer` (to the same text): no request was made."""
    return ResultRow(
        chunk_id=chunk.id,
        prompt_version=prompt_version,
        model=answer.model,
        source=chunk.source,
        seq=chunk.seq,
        text=chunk.text,
        result_json=answer_for(answer.result_json, chunk.id),
        provider=answer.provider,
        key_alias="",  # no key was used for it
        input_tokens=0,
        output_tokens=0,
        latency_ms=0.0,
        cost=0.0,
        run_id=run_id,
        copied_from=answer.chunk_id,
    )
