"""What a job's store already says, read without touching it: done work, pages, past answers.

A plan must not disturb a job that may be running on the same store, so it
opens the SQLite file read-only (no run lease, no schema set-up) and asks it
the engine's own questions: which chunks have a result for the prompt
version and a model (the batcher's `done_ids`), which pages a crawl stored
for a target (the crawl stage's `pages_of`).  A store that does not exist
yet holds nothing.

It also reads the job's past answers, for what a plan cannot know from the
input: the output tokens a chunk brings back, what the provider billed for a
prompt against the engine's estimate of it, and how long answers took.  The
same job is run again and again (another prompt version, new input), so
these are the best estimates there are.  Rows of one request share their
run, key and latency; each carries its share (`// n`) of the request's usage.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from engine.config.settings import PromptSettings
from engine.pipeline.prompt import build_messages, estimate_prompt_tokens
from engine.pipeline.records import Chunk
from engine.store.sqlite_store import MAX_QUERY_PARAMS, StoredAnswer, StoredPage
from engine.store.store_error import store_error

HISTORY_ROWS = 5000
"""The most recent result rows read for the history: enough for stable means, quick to read."""


@dataclass(frozen=True, slots=True)
class AnswerHistory:
    """What the job's stored results say about its answers (figures None: no results).

    `billed_per_estimated` is the prompt tokens the provider billed over the
    engine's admission estimate of the same prompts; `latencies_s` each
    request's latency, sorted.
    """

    results: int = 0
    requests: int = 0
    output_tokens_per_chunk: float | None = None
    billed_per_estimated: float | None = None
    latencies_s: tuple[float, ...] = ()


class StoredWork:
    """The job's store, read-only; an absent store holds nothing.  A context manager."""

    def __init__(self, store: str | Path) -> None:
        self.path = Path(store)
        self._conn: sqlite3.Connection | None = None
        # A crawl's pages are looked up from the reading thread while the batcher
        # asks for done ids on the loop's: one query at a time.
        self._lock = threading.Lock()
        if self.path.is_file():
            try:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
                self._conn.execute("SELECT 1 FROM results LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                self.close()
                raise store_error(self.path, exc) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> StoredWork:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        if self._conn is None:
            return []
        try:
            with self._lock:
                return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from None

    async def done_ids(self, chunk_ids: Sequence[str], prompt_version: str, model: str) -> set[str]:
        """Which of `chunk_ids` have a result for this prompt version and model (the batcher's
        question; async only to fit it)."""
        done: set[str] = set()
        for part in _parts(chunk_ids, MAX_QUERY_PARAMS - 2):
            rows = self._rows(
                "SELECT chunk_id FROM results WHERE prompt_version = ? AND model = ?"
                f" AND chunk_id IN ({','.join('?' * len(part))})",
                (prompt_version, model, *part),
            )
            done.update(str(row[0]) for row in rows)
        return done

    async def answers_for(
        self, text_keys: Iterable[str], prompt_version: str, models: Sequence[str]
    ) -> dict[str, StoredAnswer]:
        """Which of `text_keys` have a stored answer at this prompt version from one of
        `models` (`Store.answers_for`'s question; a store from before texts were filed has
        none)."""
        found: dict[str, StoredAnswer] = {}
        wanted = list(dict.fromkeys(models))
        if self._conn is None or not wanted or not self._has_table("answered_texts"):
            return found
        for part in _parts(sorted(set(text_keys)), MAX_QUERY_PARAMS - 1 - len(wanted)):
            rows = self._rows(
                "SELECT a.text_key, a.chunk_id, a.model FROM answered_texts AS a"
                f" WHERE a.prompt_version = ? AND a.model IN ({','.join('?' * len(wanted))})"
                f" AND a.text_key IN ({','.join('?' * len(part))})",
                (prompt_version, *wanted, *part),
            )
            for key, chunk_id, model in rows:
                found.setdefault(str(key), StoredAnswer(str(chunk_id), str(model), "", ""))
        return found

    def _has_table(self, name: str) -> bool:
        rows = self._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return bool(rows)

    def pages_of(self, targets: Sequence[str]) -> dict[str, list[StoredPage]]:
        """The stored pages of each of `targets` (absent: never crawled), root first."""
        found: dict[str, list[StoredPage]] = {}
        for part in _parts(targets, MAX_QUERY_PARAMS):
            rows = self._rows(
                "SELECT target, url, depth, outcome, title, text FROM pages"
                f" WHERE target IN ({','.join('?' * len(part))}) ORDER BY target, depth, rowid",
                part,
            )
            for target, url, depth, outcome, title, text in rows:
                body = None if text is None else str(text)
                page = StoredPage(str(url), int(str(depth)), str(outcome), str(title), body)
                found.setdefault(str(target), []).append(page)
        return found

    def history(self, models: Sequence[str], prompt: PromptSettings) -> AnswerHistory:
        """The job's most recent answers by any of `models` (any prompt version), per request.

        A request's prompt is rebuilt from its stored chunks with `prompt` and
        estimated as admission estimates it, to set against what was billed.
        """
        if not models:
            return AnswerHistory()
        rows = self._rows(
            "SELECT run_id, key_alias, latency_ms, chunk_id, source, seq, text,"
            " input_tokens, output_tokens FROM results"
            f" WHERE model IN ({','.join('?' * len(models))}) ORDER BY rowid DESC LIMIT ?",
            (*models, HISTORY_ROWS),
        )
        requests: dict[tuple[object, object, object], list[tuple[object, ...]]] = {}
        for row in rows:
            requests.setdefault((row[0], row[1], row[2]), []).append(row)
        if not requests:
            return AnswerHistory()
        billed = estimated = output = 0.0
        latencies: list[float] = []
        for (_run, _key, latency_ms), members in requests.items():
            n = len(members)
            chunks = [Chunk(str(m[3]), str(m[4]), int(str(m[5])), str(m[6]), 0) for m in members]
            # Each row holds its floor share of the request's usage: add back half a remainder.
            half_remainder = (n - 1) / 2
            billed += int(str(members[0][7])) * n + half_remainder
            output += int(str(members[0][8])) * n + half_remainder
            estimated += estimate_prompt_tokens(build_messages(prompt, chunks))
            latencies.append(float(str(latency_ms)) / 1000.0)
        return AnswerHistory(
            results=len(rows),
            requests=len(requests),
            output_tokens_per_chunk=output / len(rows),
            billed_per_estimated=billed / estimated if estimated else None,
            latencies_s=tuple(sorted(latencies)),
        )


def _parts(items: Sequence[str], size: int) -> Iterator[list[str]]:
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]
