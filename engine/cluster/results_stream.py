"""Result and failure rows on their way to the one store: a Redis Stream, and its codec.

In a cluster the outcomes do not write SQLite: their rows go through
`ResultsStreamRows` (the outcomes' `RowSink`) to the work queue, which
appends them to the job's results stream and acknowledges their batch in
one atomic step.  The job's collector (`engine.cluster.result_collector`)
reads that stream and writes the rows to the SQLite store.

A results entry has `v` and `rows`, a JSON array of rows; each row is a
JSON object with `kind` ("result", "failure", or "page" for a crawled
page's outcome) and the row's fields by name, so a row reads the same in
every process that writes or reads it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from engine.cluster.stream_queue import StreamWorkQueue
from engine.pipeline.records import text_key
from engine.store.sqlite_store import FailureRow, PageRow, ResultRow

RESULT = "result"
FAILURE = "failure"
PAGE = "page"


class RowFormatError(ValueError):
    """A results entry that is not rows this version can read."""


# Field names read once: `dataclasses.asdict` copies every value deeply, ~90 µs a row.
# A result's text key is the collector's to work out (once, as the row is read: the
# store and the record of answered texts both need it): rows read as before it.
_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(ResultRow) if f.name != "text_key")
_FAILURE_FIELDS = tuple(f.name for f in dataclasses.fields(FailureRow))
_PAGE_FIELDS = tuple(f.name for f in dataclasses.fields(PageRow))

Row = ResultRow | FailureRow | PageRow


def encode_row(row: Row) -> str:
    """One row as a JSON object: its kind and its fields by name."""
    if isinstance(row, ResultRow):
        kind, names = RESULT, _RESULT_FIELDS
    elif isinstance(row, PageRow):
        kind, names = PAGE, _PAGE_FIELDS
    else:
        kind, names = FAILURE, _FAILURE_FIELDS
    body: dict[str, Any] = {"kind": kind}
    for name in names:
        body[name] = getattr(row, name)
    if not body.get("copied_from", True):
        del body["copied_from"]  # an answered row reads as it did before copies existed
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def decode_rows(fields: Mapping[Any, Any], run_id: int | None = None) -> list[Row]:
    """The rows of a results entry (fields as bytes or str), stamped with `run_id` when
    given (the collector's run); `RowFormatError` if unreadable."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    if text.get("v") != "1":
        raise RowFormatError(f"results format {text.get('v')!r}; this collector reads '1'")
    try:
        items = json.loads(text["rows"])
        return [_row(item, run_id) for item in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise RowFormatError(f"unreadable results entry: {exc!r}") from exc


def _row(item: Any, run_id: int | None) -> Row:
    values = dict(item)
    kind = values.pop("kind")
    if run_id is not None:
        values["run_id"] = run_id  # set as it is read: a copy of every row cost more
    if kind == RESULT:
        return ResultRow(**values, text_key=text_key(values["text"]))
    if kind == FAILURE:
        return FailureRow(**values)
    if kind == PAGE:
        return PageRow(**values)
    raise ValueError(f"a row of kind {kind!r}")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class ResultsStreamRows:
    """The outcomes' row sink in a cluster: each row settles its chunk in the work queue.

    A batch is acknowledged only when all its chunks' rows are in the
    results stream (appended in the same script), which with Redis's
    append-only file on is durable storage of the results.
    """

    def __init__(self, queue: StreamWorkQueue) -> None:
        self._queue = queue

    async def put_result(self, row: ResultRow) -> None:
        await self._queue.settle(row.chunk_id, encode_row(row))

    async def put_failure(self, row: FailureRow) -> None:
        await self._queue.settle(row.chunk_id, encode_row(row), failure=True)
