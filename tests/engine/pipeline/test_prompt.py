"""A batch becomes chat messages; an answer becomes per-chunk results."""

from __future__ import annotations

import json

import pytest

from engine.config.settings import PromptSettings
from engine.pipeline.prompt import (
    AnswerShapeError,
    build_messages,
    chunk_lines,
    estimate_prompt_tokens,
    parse_answer,
    placeholder_problems,
    placeholders_in,
)
from engine.pipeline.records import Chunk
from engine.pipeline.token_estimate import estimate_tokens


def chunk(chunk_id: str, text: str) -> Chunk:
    return Chunk(id=chunk_id, source="doc.txt", seq=0, text=text, est_tokens=estimate_tokens(text))


def answer(*entries: object) -> str:
    return json.dumps({"results": list(entries)})


# building -----------------------------------------------------------------------------


def test_each_chunk_is_one_id_tagged_line_in_order() -> None:
    lines = chunk_lines([chunk("a1", "first"), chunk("b2", "second")])

    assert lines == "[id=a1] first\n[id=b2] second"


def test_newlines_and_runs_of_whitespace_inside_a_chunk_are_folded() -> None:
    lines = chunk_lines([chunk("a", "line one\n\n  line two\r\n\tthree  ")])

    assert lines == "[id=a] line one line two three"


def test_build_messages_is_the_system_prompt_then_the_filled_in_user_prompt() -> None:
    prompt = PromptSettings(
        system="be terse", user="shape: {shape}\n---\n{chunks}", shape='{"results": []}'
    )

    messages = build_messages(prompt, [chunk("a", "alpha\nbeta"), chunk("b", "gamma")])

    assert messages == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": 'shape: {"results": []}\n---\n[id=a] alpha beta\n[id=b] gamma'},
    ]


def test_a_chunk_that_mentions_a_placeholder_is_left_as_written() -> None:
    prompt = PromptSettings(user="{shape} {chunks}", shape="S")

    [_, user] = build_messages(prompt, [chunk("a", "literal {shape} here")])

    assert user["content"] == "S [id=a] literal {shape} here"


def test_the_default_prompt_names_every_chunk_id() -> None:
    chunks = [chunk(f"id{i}", f"text {i}") for i in range(5)]

    [_, user] = build_messages(PromptSettings(), chunks)

    assert all(f"[id=id{i}] text {i}" in user["content"] for i in range(5))
    assert "{chunks}" not in user["content"] and "{shape}" not in user["content"]


def test_doubled_braces_send_a_placeholders_own_spelling_and_json_stays_as_written() -> None:
    prompt = PromptSettings(
        system='Say {{chunks}} to nobody; {"a": {"b": 1}}',
        user='Answer {"results": []} like {shape}; {{shape}} is a word. {chunks}',
        shape="S",
    )

    [system, user] = build_messages(prompt, [chunk("a", "x {{chunks}} y")])

    assert system["content"] == 'Say {chunks} to nobody; {"a": {"b": 1}}'
    assert (
        user["content"] == 'Answer {"results": []} like S; {shape} is a word. [id=a] x {{chunks}} y'
    )


def test_a_shape_that_mentions_chunks_is_not_filled_in_again() -> None:
    prompt = PromptSettings(user="{shape}|{chunks}", shape="a {chunks} b")

    [_, user] = build_messages(prompt, [chunk("a", "text")])

    assert user["content"] == "a {chunks} b|[id=a] text"


def test_unknown_placeholders_are_named_once_each_with_the_known_ones() -> None:
    prompt = PromptSettings(
        system="You are {role}.",
        user="{chunk} {chunks} {Shape} {chunk} { chunks } {{fine}} {shape}",
    )

    assert placeholders_in(prompt.user) == [
        "chunk", "chunks", "Shape", "chunk", " chunks ", "shape"
    ]  # fmt: skip
    known = "(known: {chunks}, {shape}; write {{%s}} to send it as text)"
    assert placeholder_problems(prompt) == [
        ("user", "unknown placeholder {chunk} " + known % "chunk"),
        ("user", "unknown placeholder {Shape} " + known % "Shape"),
        ("user", "unknown placeholder { chunks } " + known % " chunks "),
        ("system", "unknown placeholder {role} (known: none; write {{role}} to send it as text)"),
    ]
    assert placeholder_problems(PromptSettings()) == []


def test_prompt_tokens_are_the_content_estimates_plus_chat_framing() -> None:
    messages = [{"role": "system", "content": "abc"}, {"role": "user", "content": "abcdef"}]

    assert estimate_prompt_tokens(messages) == (1 + 4) + (2 + 4) + 3


# parsing ------------------------------------------------------------------------------


def test_a_plain_json_answer_gives_results_by_id() -> None:
    parsed = parse_answer(
        answer({"id": "a", "summary": "A"}, {"id": "b", "summary": "B"}), ["a", "b"]
    )

    assert parsed.results == {"a": {"id": "a", "summary": "A"}, "b": {"id": "b", "summary": "B"}}
    assert parsed.missing == ()


@pytest.mark.parametrize(
    "wrapped",
    [
        "```json\n{body}\n```",
        "```\n{body}\n```",
        "```JSON {body}```",
        "  \n```json\n{body}\n```\n  ",
    ],
)
def test_a_fenced_json_answer_is_accepted(wrapped: str) -> None:
    content = wrapped.replace("{body}", answer({"id": "a", "summary": "A"}))

    assert parse_answer(content, ["a"]).results == {"a": {"id": "a", "summary": "A"}}


def test_ids_the_answer_left_out_are_reported_in_the_order_they_were_sent() -> None:
    parsed = parse_answer(answer({"id": "b"}), ["c", "b", "a"])

    assert set(parsed.results) == {"b"}
    assert parsed.missing == ("c", "a")


def test_ids_nobody_asked_for_and_entries_that_are_not_objects_are_ignored() -> None:
    parsed = parse_answer(answer({"id": "zzz"}, "a", 7, None, {"id": "a"}), ["a"])

    assert set(parsed.results) == {"a"}


def test_a_duplicate_id_keeps_the_first_entry() -> None:
    parsed = parse_answer(answer({"id": "a", "n": 1}, {"id": "a", "n": 2}), ["a"])

    assert parsed.results["a"]["n"] == 1


def test_a_numeric_id_matches_the_same_id_sent_as_text() -> None:
    parsed = parse_answer(answer({"id": 42, "summary": "x"}), ["42"])

    assert set(parsed.results) == {"42"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "empty"),
        ("   \n", "empty"),
        ("Sure! Here are the results.", "not JSON"),
        ('{"results": [', "not JSON"),
        ('[{"id": "a"}]', '"results"'),
        ('{"answers": [{"id": "a"}]}', '"results"'),
        ('{"results": {"id": "a"}}', '"results"'),
        (answer({"id": "other"}), "none of the chunk ids"),
        (answer(), "none of the chunk ids"),
    ],
)
def test_an_answer_of_the_wrong_shape_raises(content: str | None, message: str) -> None:
    with pytest.raises(AnswerShapeError, match=message):
        parse_answer(content, ["a", "b"])


def test_an_answer_shape_error_is_a_value_error() -> None:
    assert issubclass(AnswerShapeError, ValueError)
