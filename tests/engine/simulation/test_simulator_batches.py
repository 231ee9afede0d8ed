"""The simulator's Files and Batch APIs, as the real `openai` SDK drives them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import openai
import pytest

from engine.simulation.simulator import ProviderSimulator, SimKey, SimulatorConfig

MODEL = "gpt-4o-mini"


def request_line(custom_id: str, chunks: dict[str, str]) -> dict[str, Any]:
    text = "\n".join(f"[id={cid}] {body}" for cid, body in chunks.items())
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": text}]},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest.fixture
async def served() -> AsyncIterator[Callable[..., Any]]:
    """A simulator on loopback with one key, and an SDK client for it."""
    opened: list[tuple[ProviderSimulator, httpx2.AsyncClient]] = []

    async def start(**config: Any) -> tuple[ProviderSimulator, openai.AsyncOpenAI]:
        sim = ProviderSimulator(SimulatorConfig(keys=(SimKey("sk-batch", None, None),), **config))
        url = await sim.start()
        http = httpx2.AsyncClient()
        opened.append((sim, http))
        return sim, openai.AsyncOpenAI(
            api_key="sk-batch", base_url=url, max_retries=0, http_client=http
        )

    yield start
    for sim, http in opened:
        await http.aclose()
        await sim.stop()


async def wait_until_done(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    for _ in range(200):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} never ended")


async def test_a_batch_goes_through_files_and_batches_as_openai_does(served: Any) -> None:
    sim, client = await served(batch_delay_s=0.1)
    lines = [request_line(f"r{i}", {f"c{i}a": "alpha beta", f"c{i}b": "gamma"}) for i in range(3)]
    uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    assert batch.request_counts is not None and batch.request_counts.total == 3
    done = await wait_until_done(client, batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert done.request_counts.completed == 3
    output = (await client.files.content(done.output_file_id)).content.splitlines()
    answers = {json.loads(line)["custom_id"]: json.loads(line) for line in output}
    assert sorted(answers) == ["r0", "r1", "r2"]
    body = answers["r1"]["response"]["body"]
    assert answers["r1"]["response"]["status_code"] == 200
    content = json.loads(body["choices"][0]["message"]["content"])
    assert [entry["id"] for entry in content["results"]] == ["c1a", "c1b"]
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert sim.batches.stats.batches_created == 1
    assert sim.stats.chunk_ids_answered == 6
    listed = await client.batches.list()
    assert [b.id for b in listed.data] == [batch.id]


async def test_failed_lines_go_to_the_error_file(served: Any) -> None:
    _, client = await served(batch_delay_s=0.05, batch_fault_line=0.5, seed=3)
    lines = [request_line(f"r{i}", {f"c{i}": "words here"}) for i in range(40)]
    uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_until_done(client, batch.id)
    assert done.status == "completed"
    errors = [
        json.loads(line)
        for line in (await client.files.content(done.error_file_id)).content.splitlines()
    ]
    outputs = (await client.files.content(done.output_file_id)).content.splitlines()
    assert 0 < len(errors) < 40 and len(errors) + len(outputs) == 40
    assert {e["response"]["status_code"] for e in errors} == {500}
    assert done.request_counts.failed == len(errors)


async def test_a_batch_can_fail_expire_or_be_cancelled(served: Any) -> None:
    sim, client = await served(batch_delay_s=0.05)
    lines = [request_line(f"r{i}", {f"c{i}": "words"}) for i in range(4)]
    file_id = (await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")).id

    async def submit() -> str:
        created = await client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return created.id

    sim.set_batch_faults(batch_fault_fail=1.0)
    failed = await wait_until_done(client, await submit())
    assert failed.status == "failed" and failed.errors is not None
    sim.set_batch_faults(batch_fault_fail=0.0, batch_fault_expire=1.0)
    expired = await wait_until_done(client, await submit())
    assert expired.status == "expired"
    assert expired.request_counts.completed == 2 and expired.request_counts.failed == 2
    codes = [
        json.loads(line)["error"]["code"]
        for line in (await client.files.content(expired.error_file_id)).content.splitlines()
    ]
    assert codes == ["batch_expired", "batch_expired"]
    sim.set_batch_faults(batch_fault_expire=0.0, batch_fault_stuck=1.0)
    stuck = await submit()
    await asyncio.sleep(0.1)
    assert (await client.batches.retrieve(stuck)).status == "in_progress"
    assert (await client.batches.cancel(stuck)).status == "cancelling"
    assert (await client.batches.retrieve(stuck)).status == "cancelled"


async def test_a_batch_cancelled_in_progress_gives_the_lines_it_finished(served: Any) -> None:
    sim, client = await served(batch_delay_s=2.0)
    lines = [request_line(f"r{i}", {f"c{i}": "words"}) for i in range(20)]
    file_id = (await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")).id
    created = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await asyncio.sleep(1.1)  # about half way through (validating takes the first tenth)

    assert (await client.batches.cancel(created.id)).status == "cancelling"
    cancelled = await wait_until_done(client, created.id)

    assert cancelled.status == "cancelled" and cancelled.error_file_id is None
    answered = (await client.files.content(cancelled.output_file_id)).content.splitlines()
    assert 5 <= len(answered) <= 15  # half of 20, give or take the loop's timing
    assert [json.loads(line)["custom_id"] for line in answered] == [
        f"r{i}" for i in range(len(answered))
    ]
    assert cancelled.request_counts.completed == len(answered)
    assert sim.batches.stats.batches_cancelled == 1


async def test_an_input_line_the_chat_endpoint_refuses_fails_the_batch(served: Any) -> None:
    _, client = await served(batch_delay_s=0.05)
    bad = request_line("r0", {"c0": "x"})
    bad["body"]["messages"] = []
    file_id = (await client.files.create(file=("in.jsonl", jsonl([bad])), purpose="batch")).id
    created = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_until_done(client, created.id)
    assert done.status == "failed"
    assert done.errors is not None and done.errors.data is not None
    assert done.errors.data[0].line == 1


async def test_batches_need_a_known_key(served: Any) -> None:
    sim, _ = await served()
    async with httpx2.AsyncClient() as http:
        stranger = openai.AsyncOpenAI(
            api_key="sk-unknown", base_url=sim.base_url, max_retries=0, http_client=http
        )
        with pytest.raises(openai.AuthenticationError):
            await stranger.batches.list()
        client = openai.AsyncOpenAI(
            api_key="sk-batch", base_url=sim.base_url, max_retries=0, http_client=http
        )
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_nope")
