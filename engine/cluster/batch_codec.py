"""A batch as a stream entry's fields, and back: compact, explicit, versioned JSON.

An entry has `v` (the format's version), `chunks` (a JSON array of
`[id, source, seq, text, est_tokens]`, one per chunk) and, only when the
batch has any, `history` (its retry history as a JSON object).  Each chunk
is encoded on its own so the enqueue script can keep just the chunks that
were never enqueued and join them into the entry without decoding JSON.

An entry this code cannot read (another version's, or damaged) raises
`BatchFormatError`, so a worker of a different version dead-letters it with
the reason instead of guessing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine.pipeline.records import Chunk
from engine.pipeline.work_queue import Batch

FORMAT_VERSION = "1"


class BatchFormatError(ValueError):
    """A stream entry that is not a batch this version can read."""


def encode_chunk(chunk: Chunk) -> str:
    """One chunk as a JSON array: `[id, source, seq, text, est_tokens]`."""
    return _dumps([chunk.id, chunk.source, chunk.seq, chunk.text, chunk.est_tokens])


def decode_chunk(encoded: str | bytes) -> Chunk:
    """A chunk `encode_chunk` made; `BatchFormatError` if it is not one."""
    try:
        return chunk_of_row(json.loads(encoded))
    except (TypeError, ValueError) as exc:
        raise BatchFormatError(f"unreadable chunk: {exc!r}") from exc


def encode_history(batch: Batch) -> str:
    """The batch's retry history as a JSON object, or "" when it has none (fresh work)."""
    history: dict[str, Any] = {}
    if batch.attempt:
        history["attempt"] = batch.attempt
    if batch.last_error:
        history["last_error"] = batch.last_error
    if batch.est_prompt_tokens:
        history["est_prompt_tokens"] = batch.est_prompt_tokens
    if batch.reasons:
        history["reasons"] = list(batch.reasons)
    if batch.refusals:
        history["refusals"] = batch.refusals
    if batch.refused_wait_s:
        history["refused_wait_s"] = batch.refused_wait_s
    if batch.model:
        history["model"] = batch.model
    return _dumps(history) if history else ""


def encode_batch(batch: Batch) -> dict[str, str]:
    """The fields of a stream entry holding `batch`."""
    fields = {
        "v": FORMAT_VERSION,
        "chunks": "[" + ",".join(encode_chunk(c) for c in batch.chunks) + "]",
    }
    history = encode_history(batch)
    if history:
        fields["history"] = history
    return fields


def decode_batch(fields: Mapping[Any, Any]) -> Batch:
    """The batch in a stream entry's fields (bytes or str); `BatchFormatError` if unreadable."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    version = text.get("v")
    if version != FORMAT_VERSION:
        raise BatchFormatError(f"batch format {version!r}; this worker reads {FORMAT_VERSION!r}")
    try:
        rows = json.loads(text["chunks"])
        chunks = tuple(chunk_of_row(row) for row in rows)
        history = json.loads(text["history"]) if text.get("history") else {}
        if not chunks or not isinstance(history, dict):
            raise ValueError("no chunks" if not chunks else "history is not an object")
        return Batch(
            chunks,
            attempt=int(history.get("attempt", 0)),
            last_error=str(history.get("last_error", "")),
            est_prompt_tokens=int(history.get("est_prompt_tokens", 0)),
            reasons=[str(r) for r in history.get("reasons", [])],
            refusals=int(history.get("refusals", 0)),
            refused_wait_s=float(history.get("refused_wait_s", 0.0)),
            model=str(history.get("model", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BatchFormatError(f"unreadable batch entry: {exc!r}") from exc


def chunk_of_row(row: Any) -> Chunk:
    """A chunk from its decoded JSON array (`encode_chunk`); ValueError or TypeError if
    it is not one."""
    chunk_id, source, seq, text, est_tokens = row
    if not all(isinstance(v, str) for v in (chunk_id, source, text)):
        raise ValueError(f"chunk fields of the wrong type: {row!r:.80}")
    return Chunk(chunk_id, source, int(seq), text, int(est_tokens))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
