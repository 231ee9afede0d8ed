"""What the drift monitor measures about each answer and each chunk result.

Two units, because the engine learns things at two grains.  Output tokens,
latency and cost are known only for a whole answer (a batch of chunks):
every chunk of one answer would carry the same share, so treating them as
per-chunk samples would count one observation five times and make every
distribution test five times too sure of itself.  They live on
`AnswerFeatures`.  Text length, items and refusals are per chunk and live
on `ResultFeatures`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LATENCY_SCALE_S",
    "AnswerFeatures",
    "ResultFeatures",
    "features_of_result",
    "looks_like_refusal",
]


LATENCY_SCALE_S = 0.05
"""The least latency a change in latency is measured against.  A provider answering
within milliseconds doubles its median on a busy machine's own delays (the event loop,
the network stack), which is load, not the provider drifting; judged against at least
this, such moves stay small and neither trip the gates nor slow the job."""


@dataclass(frozen=True, slots=True)
class AnswerFeatures:
    """One answer from the provider for a batch of `chunks` chunks, parsed or not.

    `missing_ids` counts the batch's chunk ids the answer left out (0 when
    it failed to parse: nothing could be read from it).  Tokens and cost
    are the whole answer's; the monitor divides them by `chunks`.
    """

    chunks: int
    parse_failed: bool = False
    missing_ids: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0

    @property
    def tokens_per_chunk(self) -> float:
        return self.output_tokens / max(1, self.chunks)

    @property
    def cost_per_chunk(self) -> float:
        return self.cost_usd / max(1, self.chunks)


@dataclass(frozen=True, slots=True)
class ResultFeatures:
    """One chunk's parsed result entry, reduced to what drift is judged on."""

    answer_chars: int  # length of the entry as compact JSON
    items: int  # length of the entry's longest list: what was extracted
    empty_or_refusal: bool


# A refusal opens with one of these; anchoring at the start keeps a summary
# that *quotes* "I cannot attend" from counting.  Apostrophes are normalised
# first, so "I’m" and "I'm" match alike.  "Unfortunately" is left out: it
# opens as many real summaries ("Unfortunately, sales fell") as refusals.
_REFUSAL = re.compile(
    r"""
    (?:i'?m|i\ am)\ (?:sorry|afraid|unable|not\ able)
    | i\ (?:cannot|can'?t|can\ not|won'?t|am\ unable|do\ not\ have|don'?t\ have)\b
    | (?:sorry|(?:my\ )?apologies)\b
    | as\ an\ ai\b
    | (?:n/?a|none|null|no\ (?:content|information|summary|data))\W*$
    """,
    re.VERBOSE,
)
_PREFIX_CHARS = 80  # a refusal shows itself in its first words


def looks_like_refusal(text: str) -> bool:
    """True for blank text and for text that opens like a refusal or a placeholder.

    ("I'm sorry, …", "I cannot …", "As an AI …", "N/A").  Only the opening is
    read: a refusal says so first, and content that mentions one later is
    content.
    """
    head = text[:_PREFIX_CHARS].strip().lower().replace("’", "'").lstrip("\"'`*-# ")
    return not head or _REFUSAL.match(head) is not None


def features_of_result(
    entry: Mapping[str, Any], id_key: str = "id", encoded: str | None = None
) -> ResultFeatures:
    """Features of one parsed result entry, like `{"id": …, "summary": …, "items": […]}`.

    The entry is empty or a refusal when, apart from its id, it holds no
    content at all (only blanks, nulls and empty containers), or when one
    of its own texts (a top-level string, like `summary`) opens like a
    refusal.  Strings inside extracted items are data: an item "N/A" is not
    the model refusing.  `encoded`, the entry as compact JSON when the
    caller has it already (the engine stores it), saves encoding it twice.
    """
    # One flat pass over the top level (this runs for every result); only
    # nested containers are walked, and only while no content was found yet.
    items = 0
    has_content = False
    refusal = False
    for key, value in entry.items():
        if key == id_key or value is None:
            continue
        if isinstance(value, str):
            if value.strip():
                has_content = True
                if looks_like_refusal(value):
                    refusal = True
        elif isinstance(value, list):
            items = max(items, len(value))
            if not has_content:
                has_content = _has_content(value)
        elif isinstance(value, Mapping):
            if not has_content:
                has_content = _has_content(value)
        else:
            has_content = True
    return ResultFeatures(
        answer_chars=len(
            encoded
            if encoded is not None
            else json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        ),
        items=items,
        empty_or_refusal=refusal or not has_content,
    )


def _has_content(value: Any) -> bool:
    """True if anything inside `value` is a non-blank string or another non-null scalar."""
    return any(not isinstance(leaf, str) or leaf.strip() for leaf in _leaves(value))


def _leaves(value: Any) -> Iterator[Any]:
    """Every scalar inside `value`, skipping nulls; containers are walked, not yielded."""
    if isinstance(value, Mapping):
        for inner in value.values():
            yield from _leaves(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _leaves(inner)
    elif value is not None:
        yield value
