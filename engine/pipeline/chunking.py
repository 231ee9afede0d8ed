"""Documents cut into chunks that fit a token budget.

The budget is kept in UTF-8 bytes (`target_tokens * BYTES_PER_TOKEN`), the
same measure `estimate_tokens` uses, so a chunk that fits the byte budget is
estimated within the token target without re-encoding anything.  Pure-ASCII
documents are cut as they are; others are encoded once and cut as bytes at
character boundaries.  Every search looks only inside the current window, so
the work is linear in the document's size.

A cut prefers, in order: a paragraph break, a sentence end, any whitespace,
and only then the middle of a word too long for the budget.  Paragraph and
sentence cuts must fill at least half the window, so a break near the start
doesn't waste a chunk.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import AnyStr, Generic

from engine.pipeline.records import Chunk, Document, chunk_id
from engine.pipeline.token_estimate import BYTES_PER_TOKEN


@dataclass(frozen=True, slots=True)
class _Marks(Generic[AnyStr]):
    """The patterns a cut looks for, for text held as `str` or as UTF-8 `bytes`."""

    paragraph: re.Pattern[AnyStr]  # a blank line
    sentence: re.Pattern[AnyStr]  # end punctuation (and closing quotes) before whitespace
    space: re.Pattern[AnyStr]  # a run of whitespace
    non_space: re.Pattern[AnyStr]
    space_chars: tuple[AnyStr, ...]
    is_char_start: Callable[[AnyStr, int], bool]


def _utf8_char_start(data: bytes, index: int) -> bool:
    return data[index] & 0xC0 != 0x80  # not a continuation byte


def _always(data: str, index: int) -> bool:
    return True


# re.ASCII: in pure-ASCII text `\s` must match exactly what it matches in bytes.
_ASCII_MARKS: _Marks[str] = _Marks(
    paragraph=re.compile(r"\n[ \t\r\f\v]*\n", re.ASCII),
    sentence=re.compile(r"[.!?][\"')\]]*(?=\s)", re.ASCII),
    space=re.compile(r"\s+", re.ASCII),
    non_space=re.compile(r"\S", re.ASCII),
    space_chars=(" ", "\n", "\t", "\r"),
    is_char_start=_always,
)
_UTF8_MARKS: _Marks[bytes] = _Marks(
    paragraph=re.compile(rb"\n[ \t\r\f\v]*\n"),
    sentence=re.compile(rb"[.!?][\"')\]]*(?=\s)"),
    space=re.compile(rb"\s+"),
    non_space=re.compile(rb"\S"),
    space_chars=(b" ", b"\n", b"\t", b"\r"),
    is_char_start=_utf8_char_start,
)


def chunk_document(doc: Document, target_tokens: int, overlap_tokens: int) -> Iterator[Chunk]:
    """The document's chunks, in order, each estimated at most `target_tokens`.

    Consecutive chunks share up to `overlap_tokens` of text, starting at a
    word boundary, so a fact split by a cut is whole in one of them.  A
    document that fits is one chunk; whitespace at a chunk's ends is dropped,
    and a blank document has no chunks.  Ids come from the source and the
    text, so the same document gives the same ids every run; a text repeated
    within the document is yielded once.  Only a single character wider than
    the whole budget (an emoji with `target_tokens=1`) exceeds the target.
    Raises ValueError unless `0 <= overlap_tokens < target_tokens`.
    """
    _check_sizes(target_tokens, overlap_tokens)
    return _chunks(doc, target_tokens * BYTES_PER_TOKEN, overlap_tokens * BYTES_PER_TOKEN)


def iter_chunks(
    documents: Iterable[Document], target_tokens: int, overlap_tokens: int
) -> Iterator[Chunk]:
    """Every chunk of every document, lazily, in document order."""
    _check_sizes(target_tokens, overlap_tokens)
    budget, overlap = target_tokens * BYTES_PER_TOKEN, overlap_tokens * BYTES_PER_TOKEN
    return (chunk for doc in documents for chunk in _chunks(doc, budget, overlap))


def _check_sizes(target_tokens: int, overlap_tokens: int) -> None:
    if target_tokens < 1:
        raise ValueError(f"chunk size must be at least 1 token, not {target_tokens}")
    if not 0 <= overlap_tokens < target_tokens:
        raise ValueError(
            f"chunk overlap must be between 0 and the chunk size ({target_tokens}), "
            f"not {overlap_tokens}"
        )


def _chunks(doc: Document, budget: int, overlap: int) -> Iterator[Chunk]:
    pieces: Iterator[tuple[str, int]]  # (text, its UTF-8 size)
    if doc.text.isascii():
        pieces = ((piece, len(piece)) for piece in _pieces(doc.text, budget, overlap, _ASCII_MARKS))
    else:
        data = doc.text.encode("utf-8")
        pieces = (
            (raw.decode("utf-8"), len(raw)) for raw in _pieces(data, budget, overlap, _UTF8_MARKS)
        )
    # A repeated text in one document (boilerplate, a chorus) would repeat its
    # id; its result is the same, so it is produced once and counted once.
    seen: set[str] = set()
    for text, size in pieces:
        id_ = chunk_id(doc.source, text)
        if id_ in seen:
            continue
        seen.add(id_)
        # `size` is the text's UTF-8 length, so this equals estimate_tokens(text).
        yield Chunk(id_, doc.source, len(seen) - 1, text, -(-size // BYTES_PER_TOKEN))


def _pieces(data: AnyStr, budget: int, overlap: int, marks: _Marks[AnyStr]) -> Iterator[AnyStr]:
    """The stripped pieces of `data`, each at most `budget` long."""
    first = marks.non_space.search(data)
    if first is None:
        return
    start = first.start()
    end = len(data)
    while data[end - 1 : end].isspace():
        end -= 1
    floor = start + 1  # each cut must pass the previous one, so every chunk brings new text
    while end - start > budget:
        cut = _cut(data, start, floor, start + budget, marks)
        yield data[start:cut].strip()
        if cut >= end:  # only when one character is wider than the whole budget
            return
        floor = cut + 1
        resume = cut
        if overlap:
            # Back up by the overlap, then forward to the next word's start.
            space = marks.space.search(data, max(cut - overlap, start + 1), cut)
            if space is not None:
                resume = space.end()
        word = marks.non_space.search(data, resume)
        assert word is not None  # cut < end, and data[end - 1] is not whitespace
        start = word.start()
    yield data[start:end].strip()


def _cut(data: AnyStr, start: int, floor: int, limit: int, marks: _Marks[AnyStr]) -> int:
    """Where the chunk starting at `start` ends: in [floor, limit], the best break."""
    half = max(start + (limit - start) // 2, floor)
    # endpos one past the limit lets a match end exactly at it (and its lookahead see past it).
    endpos = min(limit + 1, len(data))
    paragraph = _last(marks.paragraph, data, half, endpos)
    if paragraph is not None and paragraph.start() >= half:
        return paragraph.start()
    sentence = _last(marks.sentence, data, half, endpos)
    if sentence is not None and sentence.end() <= limit:
        return sentence.end()
    space = max(data.rfind(char, floor, limit + 1) for char in marks.space_chars)
    if space >= floor:
        return space
    # One word longer than the budget: cut it at a character boundary.
    cut = limit
    while cut > start and not marks.is_char_start(data, cut):
        cut -= 1
    if cut == start:  # a budget smaller than one character: take the whole character
        cut = limit + 1
        while cut < len(data) and not marks.is_char_start(data, cut):
            cut += 1
    return cut


def _last(
    pattern: re.Pattern[AnyStr], data: AnyStr, pos: int, endpos: int
) -> re.Match[AnyStr] | None:
    last = deque(pattern.finditer(data, pos, endpos), maxlen=1)  # drains in C, keeps one
    return last[0] if last else None
