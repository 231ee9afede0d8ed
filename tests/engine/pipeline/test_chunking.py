"""Cutting documents into chunks, and estimating their tokens."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from itertools import count, islice, pairwise

import pytest

from engine.pipeline.chunking import chunk_document, iter_chunks
from engine.pipeline.records import Chunk, Document, chunk_id
from engine.pipeline.token_estimate import estimate_tokens

# fmt: off
WORDS = (
    "budget", "latency", "vendor", "quarter", "pipeline", "review", "customer", "invoice",
    "outage", "rollout", "migration", "replica", "cohort", "margin", "forecast", "backlog",
    "release", "metric", "audit", "supplier",
)
# fmt: on


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + rng.choice(".!?")


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def prose(paragraphs: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    return "\n\n".join(paragraph(rng, rng.randint(2, 6)) for _ in range(paragraphs))


def chunks_of(text: str, target: int, overlap: int, source: str = "doc.txt") -> list[Chunk]:
    return list(chunk_document(Document(source, text), target, overlap))


# --- token estimates -------------------------------------------------------------


def test_tokens_are_estimated_as_utf8_bytes_divided_by_three_rounded_up() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("abcd") == 2
    assert estimate_tokens("čř") == 2  # four bytes
    assert estimate_tokens("🙂") == 2  # four bytes
    assert estimate_tokens("Příliš žluťoučký kůň 🐴") == 12  # 34 bytes


# --- sizes ----------------------------------------------------------------------------


def test_a_document_that_fits_is_one_chunk() -> None:
    text = "A short note.\n\nWith two paragraphs."

    (chunk,) = chunks_of(f"  {text}\n", target=400, overlap=40)

    assert chunk == Chunk(chunk_id("doc.txt", text), "doc.txt", 0, text, estimate_tokens(text))


def test_a_blank_document_has_no_chunks() -> None:
    assert chunks_of(" \n\t\n ", target=10, overlap=2) == []


@pytest.mark.parametrize("target", [5, 40, 200])
@pytest.mark.parametrize("overlap_share", [0.0, 0.1, 0.5])
def test_every_chunk_is_within_the_target(target: int, overlap_share: float) -> None:
    overlap = int(target * overlap_share)
    texts = [
        prose(30),
        prose(30).replace("budget", "rozpočet 💶").replace("review", "přezkum"),
        "x" * 5_000,
        "\n".join(sentence(random.Random(n)) for n in range(200)),
    ]
    for text in texts:
        chunks = chunks_of(text, target, overlap)

        assert len(chunks) > 1
        assert [chunk.seq for chunk in chunks] == list(range(len(chunks)))
        for chunk in chunks:
            assert chunk.est_tokens == estimate_tokens(chunk.text) <= target
            assert chunk.text == chunk.text.strip() != ""


def test_a_word_longer_than_the_target_is_cut_by_characters() -> None:
    word = "".join(chr(ord("a") + n % 26) for n in range(100))

    chunks = chunks_of(word, target=5, overlap=0)

    assert "".join(chunk.text for chunk in chunks) == word
    assert {len(chunk.text) for chunk in chunks[:-1]} == {15}


def test_multibyte_characters_are_never_split() -> None:
    rng = random.Random(2)
    text = "".join(rng.choice("žščř🐴🙂ab") for _ in range(600))  # no whitespace: cuts fall inside

    chunks = chunks_of(text, target=7, overlap=0)

    assert "".join(chunk.text for chunk in chunks) == text
    assert all(len(chunk.text.encode()) <= 21 for chunk in chunks)


def test_a_character_wider_than_the_whole_target_is_kept_whole() -> None:
    chunks = chunks_of("🐴🐎 🦄", target=1, overlap=0)

    assert [chunk.text for chunk in chunks] == ["🐴", "🐎", "🦄"]


def test_unicode_is_measured_in_bytes_not_characters() -> None:
    rng = random.Random(3)
    text = " ".join(rng.choice(["čeština", "rozpočet", "přezkum", "dodavatel"]) for _ in range(200))

    chunks = chunks_of(text, target=30, overlap=0)

    assert all(len(chunk.text.encode()) <= 90 for chunk in chunks)
    assert max(len(chunk.text) for chunk in chunks) < 90
    assert " ".join(chunk.text for chunk in chunks) == text


# --- where cuts fall -----------------------------------------------------------------


def test_cuts_prefer_paragraph_breaks() -> None:
    rng = random.Random(3)
    paragraphs = [paragraph(rng, rng.randint(1, 2)) for _ in range(100)]
    # Paragraphs under half the budget put a break in the second half of every window.
    paragraphs = [p for p in paragraphs if len(p) <= 180]

    chunks = chunks_of("\n\n".join(paragraphs), target=120, overlap=0)

    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.text.split("\n\n")[-1] in paragraphs
        assert chunk.text.split("\n\n")[0] in paragraphs


def test_without_paragraphs_cuts_prefer_sentence_ends() -> None:
    text = paragraph(random.Random(4), 80)

    chunks = chunks_of(text, target=100, overlap=0)

    assert len(chunks) > 5
    assert all(chunk.text[-1] in ".!?" for chunk in chunks)


def test_without_sentences_cuts_fall_between_words() -> None:
    rng = random.Random(5)
    words = [rng.choice(WORDS) for _ in range(2_000)]

    chunks = chunks_of(" ".join(words), target=50, overlap=0)

    assert [word for chunk in chunks for word in chunk.text.split()] == words


def test_a_break_near_the_start_of_the_window_is_not_taken() -> None:
    # Cutting at the early paragraph break would leave a tiny first chunk.
    text = "Title\n\n" + paragraph(random.Random(6), 30)

    first = chunks_of(text, target=100, overlap=0)[0]

    assert len(first.text) > 150


# --- overlap -----------------------------------------------------------------------------


def test_consecutive_chunks_share_about_the_overlap_starting_at_a_word() -> None:
    text = prose(40, seed=7)

    chunks = chunks_of(text, target=100, overlap=20)

    for before, after in pairwise(chunks):
        shared = longest_shared(before.text, after.text)
        assert 20 <= len(shared) <= 60  # at most 20 tokens of 3 bytes
        start = text.index(after.text)
        assert text[start - 1].isspace()


def test_with_overlap_no_text_is_lost() -> None:
    text = prose(40, seed=8)

    chunks = chunks_of(text, target=80, overlap=30)

    rebuilt = chunks[0].text
    for chunk in chunks[1:]:
        rebuilt += chunk.text[len(longest_shared(rebuilt, chunk.text)) :]
    assert rebuilt.split() == text.split()


def test_without_overlap_chunks_share_nothing() -> None:
    text = prose(40, seed=9)

    chunks = chunks_of(text, target=80, overlap=0)

    assert [word for chunk in chunks for word in chunk.text.split()] == text.split()


def longest_shared(before: str, after: str) -> str:
    """The longest end of `before` that `after` starts with."""
    for size in range(min(len(before), len(after)), 0, -1):
        if before.endswith(after[:size]):
            return after[:size]
    return ""


# --- ids ---------------------------------------------------------------------------------


def test_ids_are_the_same_every_run_and_differ_between_sources() -> None:
    text = prose(20, seed=10)

    first = chunks_of(text, target=60, overlap=10)
    again = chunks_of(text, target=60, overlap=10)
    elsewhere = chunks_of(text, target=60, overlap=10, source="other.txt")

    assert [chunk.id for chunk in first] == [chunk.id for chunk in again]
    assert len({chunk.id for chunk in first}) == len(first)
    assert not {chunk.id for chunk in first} & {chunk.id for chunk in elsewhere}
    assert all(chunk.id == chunk_id("doc.txt", chunk.text) for chunk in first)


def test_a_text_repeated_in_one_document_is_one_chunk() -> None:
    chunks = chunks_of("Thank you. " * 50, target=5, overlap=0)

    assert [(chunk.seq, chunk.text) for chunk in chunks] == [(0, "Thank you.")]


# --- many documents ---------------------------------------------------------------------


def test_iter_chunks_goes_document_by_document_lazily() -> None:
    def endless() -> Iterator[Document]:
        for n in count():
            yield Document(f"doc-{n}.txt", prose(3, seed=n))

    chunks = list(islice(iter_chunks(endless(), target_tokens=100, overlap_tokens=10), 12))

    sources = [chunk.source for chunk in chunks]
    in_order = list(dict.fromkeys(sources))
    assert len(in_order) > 1
    assert in_order == [f"doc-{n}.txt" for n in range(len(in_order))]
    assert sources == sorted(sources, key=in_order.index)  # no document is interleaved
    for source in set(sources):
        seqs = [chunk.seq for chunk in chunks if chunk.source == source]
        assert seqs == list(range(len(seqs)))


@pytest.mark.parametrize(("target", "overlap"), [(0, 0), (10, 10), (10, -1), (10, 11)])
def test_sizes_that_cannot_work_are_refused(target: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="chunk"):
        chunk_document(Document("doc.txt", "text"), target, overlap)
    with pytest.raises(ValueError, match="chunk"):
        iter_chunks([], target, overlap)


# --- speed -------------------------------------------------------------------------------


@pytest.mark.parametrize("unicode", [False, True])
def test_chunking_time_grows_linearly_with_the_document(unicode: bool) -> None:
    small = prose(150, seed=11)
    if unicode:
        small = small.replace("budget", "rozpočet 💶")
    large = "\n\n".join([small] * 10)

    def best_time(run: Callable[[], object]) -> float:
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            run()
            timings.append(time.perf_counter() - started)
        return min(timings)

    small_time = best_time(lambda: chunks_of(small, target=400, overlap=40))
    large_time = best_time(lambda: chunks_of(large, target=400, overlap=40))

    # Ten times the text: linear work is about 10x; quadratic would be about 100x.
    assert large_time < 30 * small_time
