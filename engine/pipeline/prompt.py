"""Turning a batch into chat messages, and an answer back into per-chunk results.

The user prompt is a template: `{chunks}` and `{shape}` are filled in, in one
pass, so text that arrives with the chunks is never read as a placeholder.
Only a name in braces is a placeholder, so JSON in a prompt (`{"id": 1}`)
stays as written; to send a placeholder's own spelling, double its braces:
`{{chunks}}` goes out as `{chunks}`.  Any other `{name}` is refused when the
job is loaded (`placeholder_problems`), so a typo like `{chunk}` can't reach
the model as literal text.  The system prompt takes no placeholders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.config.settings import PromptSettings
from engine.pipeline.records import Chunk, sent_text
from engine.pipeline.token_estimate import estimate_tokens

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)

# `{{name}}` (an escape) or `{name}` (a placeholder); spaces inside the braces
# are allowed here so `{ chunks }` is caught as a misspelling, not sent as text.
_PLACEHOLDER = re.compile(
    r"\{\{(?P<escaped>\s*[A-Za-z_][\w.-]*\s*)\}\}|\{(?P<name>\s*[A-Za-z_][\w.-]*\s*)\}"
)

PLACEHOLDERS: dict[str, tuple[str, ...]] = {"user": ("chunks", "shape"), "system": ()}
"""The placeholders each templated field of `[prompt]` fills in."""


class AnswerShapeError(ValueError):
    """The answer is not JSON, or not `{"results": [{"id": ...}, ...]}`."""


def chunk_lines(chunks: Sequence[Chunk]) -> str:
    return "\n".join(f"[id={c.id}] {sent_text(c.text)}" for c in chunks)


def placeholders_in(template: str) -> list[str]:
    """The placeholders a template uses, in order (escaped `{{name}}` ones left out)."""
    return [m["name"] for m in _PLACEHOLDER.finditer(template) if m["name"] is not None]


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """`template` with its placeholders replaced by `values` and `{{name}}` unescaped.

    One pass: a value is never searched for placeholders itself.
    """

    def part(match: re.Match[str]) -> str:
        if match["escaped"] is not None:
            return "{" + match["escaped"] + "}"
        return values.get(match["name"], match[0])

    return _PLACEHOLDER.sub(part, template)


def placeholder_problems(prompt: PromptSettings) -> list[tuple[str, str]]:
    """(field, message) for each unknown placeholder in the prompt's templates."""
    problems: list[tuple[str, str]] = []
    for field, known in PLACEHOLDERS.items():
        names = ", ".join(f"{{{name}}}" for name in known) or "none"
        seen: set[str] = set()
        for name in placeholders_in(getattr(prompt, field)):
            if name in known or name in seen:
                continue
            seen.add(name)
            problems.append(
                (
                    field,
                    f"unknown placeholder {{{name}}} (known: {names}; "
                    f"write {{{{{name}}}}} to send it as text)",
                )
            )
    return problems


def build_messages(prompt: PromptSettings, chunks: Sequence[Chunk]) -> list[dict[str, str]]:
    system = fill_template(prompt.system, {})
    user = fill_template(prompt.user, {"shape": prompt.shape, "chunks": chunk_lines(chunks)})
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


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
