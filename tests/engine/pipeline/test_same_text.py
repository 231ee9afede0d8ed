"""One request per text: which chunks are sent, which wait, which get a copy.

A real SQLite store in tmp_path takes the copies and answers what is
committed; the held work and its queue are the engine's own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.pipeline.held_work import HeldWork
from engine.pipeline.records import Chunk, chunk_id, text_key
from engine.pipeline.same_text import SameText, answer_for
from engine.pipeline.work_queue import InProcessWorkQueue
from engine.store.sqlite_store import Committed, ResultRow, Store


def chunk(source: str, text: str) -> Chunk:
    return Chunk(id=chunk_id(source, text), source=source, seq=0, text=text, est_tokens=4)


def answer(c: Chunk, summary: str) -> str:
    return json.dumps({"id": c.id, "summary": summary}, separators=(",", ":"))


def answered_row(c: Chunk, summary: str, model: str = "m") -> ResultRow:
    return ResultRow(
        chunk_id=c.id,
        prompt_version="1",
        model=model,
        source=c.source,
        seq=c.seq,
        text=c.text,
        result_json=answer(c, summary),
        provider="sim",
        key_alias="k1",
        input_tokens=10,
        output_tokens=5,
        latency_ms=3.0,
        cost=0.001,
        run_id=1,
    )


@pytest.fixture
def committed() -> list[Committed]:
    """What the store told its owner each transaction held (the engine counts these)."""
    return []


@pytest.fixture
async def store(tmp_path: Path, committed: list[Committed]) -> AsyncIterator[Store]:
    store = await Store.open(
        tmp_path / "results.db", batch_rows=50, batch_ms=5, on_commit=committed.append
    )
    yield store
    await store.close()


def same_text(store: Store, *, remember: int = 100, max_waiting: int = 100) -> SameText:
    held = HeldWork(InProcessWorkQueue(maxsize=10))
    return SameText(
        store,
        held,
        run_id=2,
        prompt_version="1",
        models=("m",),
        remember=remember,
        max_waiting=max_waiting,
    )


def copies(store: Store) -> list[tuple[str, str, str]]:
    """(chunk id, copied result, key alias) of every copy committed, in order."""
    with sqlite3.connect(store.path) as conn:  # beside the store: sees what is committed
        rows = conn.execute(
            "SELECT chunk_id, result_json, key_alias FROM results WHERE cost = 0 ORDER BY rowid"
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


async def test_a_text_in_flight_is_sent_once_and_its_answer_copied_to_the_waiting(
    store: Store, committed: list[Committed]
) -> None:
    texts = same_text(store)
    first, second, third = (chunk(f"doc{n}.txt", "the same words") for n in range(3))
    other = chunk("doc9.txt", "other words")

    sending = await texts.to_send([first, other, second], store)
    assert sending == [first, other]
    assert await texts.to_send([third], store) == []
    assert texts.waiting == 2

    await store.put_result(answered_row(first, "one answer"))
    await texts.answered(first, answer(first, "one answer"), "m", "sim")
    await store.flush()

    assert texts.waiting == 0 and texts.texts_in_flight == 1  # only `other` now
    assert [(cid, json.loads(result)) for cid, result, _ in copies(store)] == [
        (second.id, {"id": second.id, "summary": "one answer"}),
        (third.id, {"id": third.id, "summary": "one answer"}),
    ]
    assert sum(c.results for c in committed) == 1
    assert sum(c.cached for c in committed) == 2


async def test_an_answer_given_in_this_run_serves_a_later_chunk_before_it_is_committed(
    store: Store,
) -> None:
    texts = same_text(store)
    first, later = chunk("a.txt", "boilerplate"), chunk("b.txt", "  boilerplate\n")
    await texts.to_send([first], store)
    await texts.answered(first, answer(first, "said once"), "m", "sim")  # no row committed

    assert await texts.to_send([later], store) == []  # whitespace folded: the same words sent
    await store.flush()
    assert [cid for cid, _, _ in copies(store)] == [later.id]


async def test_a_committed_answer_serves_once_the_recent_ones_have_forgotten_it(
    store: Store,
) -> None:
    texts = same_text(store, remember=1)
    first, second = chunk("a.txt", "first text"), chunk("a.txt", "second text")
    await texts.to_send([first, second], store)
    for c in (first, second):
        await store.put_result(answered_row(c, f"answer to {c.text}"))
        await texts.answered(c, answer(c, f"answer to {c.text}"), "m", "sim")
    await store.flush()  # `first` left the recent answers, and is in the store

    again = chunk("b.txt", "first text")
    assert await texts.to_send([again], store) == []
    await store.flush()
    assert [json.loads(r)["summary"] for _, r, _ in copies(store)] == ["answer to first text"]


async def test_past_the_bound_a_duplicate_is_sent_itself(store: Store) -> None:
    texts = same_text(store, max_waiting=1)
    a, b, c = (chunk(f"doc{n}.txt", "repeated") for n in range(3))

    assert await texts.to_send([a, b, c], store) == [a, c]
    assert texts.waiting == 1


async def test_when_the_first_fails_its_waiting_chunks_are_handed_back_once(store: Store) -> None:
    texts = same_text(store)
    first, waiting, unbound = (chunk(f"doc{n}.txt", "fails") for n in range(3))
    await texts.to_send([first, waiting], store)

    assert texts.failed(unbound) == []  # it held nothing
    assert texts.failed(first) == [waiting]
    assert texts.failed(first) == []
    assert texts.waiting == 0 and texts.texts_in_flight == 0
    assert await texts.to_send([unbound], store) == [unbound]  # the text is free again


async def test_a_copy_carries_its_own_chunk_id() -> None:
    assert json.loads(answer_for('{"id":"aaa","summary":"s"}', "bbb")) == {
        "id": "bbb",
        "summary": "s",
    }
    assert answer_for("not json", "bbb") == "not json"
    assert answer_for('["no", "id"]', "bbb") == '["no", "id"]'


async def test_the_store_answers_by_text_at_the_version_from_the_models_in_order(
    store: Store,
) -> None:
    c = chunk("a.txt", "asked twice")
    await store.put_result(answered_row(c, "from m2", model="m2"))
    await store.put_result(answered_row(c, "from m1", model="m1"))
    await store.flush()
    key = text_key(c.text)

    found = await store.answers_for([key, text_key("never asked")], "1", ["m1", "m2"])
    assert list(found) == [key]
    assert found[key].model == "m1" and json.loads(found[key].result_json)["summary"] == "from m1"
    assert (await store.answers_for([key], "1", ["m2"]))[key].model == "m2"
    assert await store.answers_for([key], "2", ["m1", "m2"]) == {}  # another prompt version
    assert await store.answers_for([key], "1", ["m3"]) == {}  # another model


async def test_a_copy_is_not_filed_as_an_answer(store: Store) -> None:
    texts = same_text(store)
    first, second = chunk("a.txt", "copied"), chunk("b.txt", "copied")
    await store.put_result(answered_row(first, "original"))
    await store.flush()
    assert await texts.to_send([second], store) == []
    await store.flush()

    found = await store.answers_for([text_key("copied")], "1", ["m"])
    assert found[text_key("copied")].chunk_id == first.id
