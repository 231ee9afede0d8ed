"""A Batch API input file made of the pipeline's batches, and its output read back.

Each request of the file is one of the pipeline's batches — the chunks the
batcher grouped, in the messages and the body the online route sends
(`prompt.build_messages`, `client.chat_body`) — under a `custom_id` that
maps it back to its chunks.  A file holds at most the provider's number of
requests and bytes; `BatchInput.fits` says when the next one would not fit.

An output or error file's lines are read into `LineAnswer`s: the
`custom_id`, and either the response's status and body or the error the
provider gave instead.  A line that is not JSON, or has no `custom_id`, is
skipped: its request is then missing, and is retried as one that was never
answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine.config.settings import PromptSettings
from engine.pipeline.prompt import build_messages, estimate_prompt_tokens
from engine.pipeline.work_queue import Batch
from engine.provider.batch_client import CHAT_ENDPOINT
from engine.provider.client import chat_body

_LINE_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class BatchInput:
    """Requests collected for one input file, under the provider's limits."""

    model: str
    max_requests: int
    max_bytes: int
    requests: dict[str, Batch] = field(default_factory=dict)  # by custom_id
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    prompt_tokens: int = 0  # estimated, of all its requests

    def line_for(self, prompt: PromptSettings, batch: Batch) -> tuple[bytes, int]:
        """The input line that asks for `batch` (and its estimated prompt tokens)."""
        messages = build_messages(prompt, batch.chunks)
        line = {
            "custom_id": f"r{len(self.requests)}",
            "method": "POST",
            "url": CHAT_ENDPOINT,
            "body": chat_body(self.model, messages, prompt.temperature),
        }
        return _LINE_JSON.encode(line).encode("utf-8") + b"\n", estimate_prompt_tokens(messages)

    def fits(self, line: bytes) -> bool:
        """Whether one more line stays within the file's limits (an empty file takes any)."""
        if not self.requests:
            return True
        return len(self.requests) < self.max_requests and self.size + len(line) <= self.max_bytes

    def add(self, batch: Batch, line: bytes, prompt_tokens: int) -> None:
        """Add `batch`'s line (made by `line_for` just before: its custom_id is the next)."""
        self.requests[f"r{len(self.requests)}"] = batch
        self.lines.append(line)
        self.size += len(line)
        self.prompt_tokens += prompt_tokens

    @property
    def full(self) -> bool:
        return len(self.requests) >= self.max_requests

    @property
    def chunks(self) -> int:
        return sum(len(batch.chunks) for batch in self.requests.values())

    def content(self) -> bytes:
        return b"".join(self.lines)


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """One line of an output or error file."""

    custom_id: str
    status: int | None  # the response's status code; None when the line has only an error
    body: object  # the response's body: a chat completion, or an error body
    error: str  # the line's own error, "code: message" ("" when none)


def read_lines(content: bytes) -> Iterator[LineAnswer]:
    """The lines of an output or error file; unreadable ones are skipped."""
    for raw in content.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            continue
        response = line.get("response")
        status: int | None = None
        body: object = None
        if isinstance(response, dict):
            code = response.get("status_code")
            status = code if isinstance(code, int) else None
            body = response.get("body")
        error = line.get("error")
        reason = ""
        if isinstance(error, dict):
            reason = f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip()
        yield LineAnswer(line["custom_id"], status, body, reason)
