"""A Batch API input file made of the pipeline's batches, and output files read back."""

from __future__ import annotations

import json

from engine.config.settings import PromptSettings
from engine.pipeline.batch_file import BatchInput, read_lines
from engine.pipeline.prompt import build_messages
from engine.pipeline.records import Chunk
from engine.pipeline.work_queue import Batch
from engine.provider.client import chat_body

PROMPT = PromptSettings()


def batch(n: int, words: int = 20) -> Batch:
    text = " ".join(f"word{i}" for i in range(words))
    return Batch(tuple(Chunk(f"{n:04x}{i:012x}", "doc", i, text, 10) for i in range(3)))


def test_each_request_is_the_online_body_under_a_custom_id() -> None:
    file = BatchInput("gpt-4o-mini", max_requests=10, max_bytes=10_000_000)
    for n in range(2):
        line, tokens = file.line_for(PROMPT, batch(n))
        file.add(batch(n), line, tokens)

    lines = [json.loads(raw) for raw in file.content().splitlines()]

    assert [line["custom_id"] for line in lines] == ["r0", "r1"]
    assert all(line["method"] == "POST" for line in lines)
    assert all(line["url"] == "/v1/chat/completions" for line in lines)
    expected = chat_body("gpt-4o-mini", build_messages(PROMPT, batch(1).chunks), 0.0)
    assert lines[1]["body"] == expected
    assert file.requests["r1"].ids == batch(1).ids and file.chunks == 6
    assert file.prompt_tokens > 0


def test_a_file_stops_at_the_providers_requests_or_bytes() -> None:
    by_requests = BatchInput("m", max_requests=2, max_bytes=10_000_000)
    by_bytes = BatchInput("m", max_requests=1000, max_bytes=1)
    for file in (by_requests, by_bytes):
        line, tokens = file.line_for(PROMPT, batch(0))
        assert file.fits(line)  # an empty file takes any line, however long
        file.add(batch(0), line, tokens)
    line, tokens = by_requests.line_for(PROMPT, batch(1))
    assert by_requests.fits(line) and not by_requests.full
    by_requests.add(batch(1), line, tokens)
    assert by_requests.full
    assert not by_requests.fits(by_requests.line_for(PROMPT, batch(2))[0])
    assert not by_bytes.fits(by_bytes.line_for(PROMPT, batch(1))[0])


def test_output_and_error_lines_are_read_and_garbage_is_skipped() -> None:
    content = b"\n".join(
        [
            json.dumps(
                {
                    "id": "batch_req_1",
                    "custom_id": "r0",
                    "response": {"status_code": 200, "request_id": "req", "body": {"x": 1}},
                    "error": None,
                }
            ).encode(),
            b"not json",
            json.dumps({"custom_id": 7}).encode(),
            json.dumps(
                {
                    "custom_id": "r1",
                    "response": None,
                    "error": {"code": "batch_expired", "message": "too late"},
                }
            ).encode(),
        ]
    )

    answers = list(read_lines(content))

    assert [(a.custom_id, a.status, a.body, a.error) for a in answers] == [
        ("r0", 200, {"x": 1}, ""),
        ("r1", None, None, "batch_expired: too late"),
    ]
