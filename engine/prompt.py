"""Turning a batch into chat messages, and an answer back into per-chunk results."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.records import Chunk
from engine.settings import PromptSettings
from engine.token_estimate import estimate_tokens

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


class AnswerShapeError(ValueError):
    """The answer is not JSON, or not `{"results": [{"id": ...}, ...]}`."""


def chunk_lines(chunks: Sequence[Chunk]) -> str:
    # Newlines inside a chunk would look like new entries to a model; fold them.
    return "\n".join(f"[id={c.id}] {' '.join(c.text.split())}" for c in chunks)


def build_messages(prompt: PromptSettings, chunks: Sequence[Chunk]) -> list[dict[str, str]]:
    user = prompt.user.replace("{shape}", prompt.shape).replace("{chunks}", chunk_lines(chunks))
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    # A few tokens of per-message framing, as the chat format adds them.
    return sum(estimate_tokens(m["content"]) + 4 for m in messages) + 3


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    """Results by chunk id, and the ids the answer left out."""

    results: dict[str, dict[str, Any]]
    missing: tuple[str, ...]


def parse_answer(content: str | None, expected_ids: Sequence[str]) -> ParsedAnswer:
    """Validate an answer against the ids that were sent."""
    if not content or not content.strip():
        raise AnswerShapeError("empty answer")
    text = _FENCE.sub("", content.strip())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnswerShapeError(f"answer is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise AnswerShapeError('answer has no "results" list')
    wanted = set(expected_ids)
    results: dict[str, dict[str, Any]] = {}
    for entry in data["results"]:
        if isinstance(entry, dict):
            entry_id = str(entry.get("id", ""))
            if entry_id in wanted and entry_id not in results:
                results[entry_id] = entry
    if not results and expected_ids:
        raise AnswerShapeError("answer names none of the chunk ids")
    missing = tuple(i for i in expected_ids if i not in results)
    return ParsedAnswer(results, missing)
