"""The simulator drifts on cue: every answer before number N is what it would
be without drift; from answer N on, the property each drift names shifts by
about the advertised amount, as the engine's own parser and features see it."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx2
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engine.config.settings import PromptSettings, SimulatorSettings
from engine.drift.features import features_of_result
from engine.drift.statistics import centroid_cosine_distance
from engine.pipeline.prompt import AnswerShapeError, ParsedAnswer, build_messages, parse_answer
from engine.pipeline.records import Chunk
from engine.simulation.simulator import (
    DRIFT_KINDS,
    REFUSAL_TEXT,
    ProviderSimulator,
    SimKey,
    SimulatorConfig,
    config_from_args,
)
from engine.simulation.simulator_launch import simulator_arguments

MODEL = "gpt-4o-mini"
SECRET = "sk-drift-test"
KEYS = (SimKey(SECRET, None, None),)

PLAIN_PROMPT = PromptSettings()
ITEMS_PROMPT = PromptSettings(
    shape='{"results": [{"id": "<chunk id>", "summary": "<one sentence>", "items": ["<fact>"]}]}'
)

_WORDS = [
    "harbour", "ferries", "January", "island", "fishermen", "winter", "bread", "prices",
    "doubled", "market", "council", "bridge", "railway", "station", "engineers", "timber",
    "quarry", "village", "festival", "orchard", "lantern", "weather", "museum",
]  # fmt: skip
# 40 chunks, each 12 distinct words (a step of 7 through 23 words never repeats
# within 12), so every chunk offers the simulator more items than it takes.
CHUNKS = tuple(
    Chunk(
        id=f"doc{i // 5}-{i % 5}",
        source=f"doc{i // 5}",
        seq=i % 5,
        text=" ".join(_WORDS[(i * 3 + j * 7) % len(_WORDS)] for j in range(12)),
        est_tokens=30,
    )
    for i in range(40)
)
BATCHES = tuple(CHUNKS[i : i + 5] for i in range(0, len(CHUNKS), 5))


@dataclass(frozen=True, slots=True)
class Answer:
    """One chat answer as a client saw it."""

    batch: Sequence[Chunk]
    content: str
    completion_tokens: int
    processing_ms: int  # the server's own `openai-processing-ms`
    wall_s: float

    def parsed(self) -> ParsedAnswer | None:
        """The engine's reading of it; None when the engine would retry it as malformed."""
        try:
            return parse_answer(self.content, [chunk.id for chunk in self.batch])
        except AnswerShapeError:
            return None

    def entries(self) -> list[dict[str, Any]]:
        parsed = self.parsed()
        assert parsed is not None
        return list(parsed.results.values())


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as shared:
        yield shared


Start = Callable[..., Any]


async def ask(
    simulator: ProviderSimulator,
    http: httpx2.AsyncClient,
    count: int,
    *,
    first: int = 0,
    prompt: PromptSettings = ITEMS_PROMPT,
) -> list[Answer]:
    """`count` answers, one at a time, for batches `first`, `first + 1`, ... (cycling)."""
    client = openai.AsyncOpenAI(
        api_key=SECRET, base_url=simulator.base_url, max_retries=0, http_client=http
    )
    answers = []
    for n in range(first, first + count):
        batch = BATCHES[n % len(BATCHES)]
        messages = cast(list[ChatCompletionMessageParam], build_messages(prompt, batch))
        started = time.monotonic()
        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
        completion = raw.parse()
        assert completion.usage is not None
        answers.append(
            Answer(
                batch,
                completion.choices[0].message.content or "",
                completion.usage.completion_tokens,
                int(raw.headers["openai-processing-ms"]),
                time.monotonic() - started,
            )
        )
    return answers


async def served_stats(simulator: ProviderSimulator, http: httpx2.AsyncClient) -> dict[str, Any]:
    response = await http.get(simulator.base_url.removesuffix("/v1") + "/_sim/stats")
    stats: dict[str, Any] = response.json()
    return stats


async def before_and_after(
    simulator: Start, http: httpx2.AsyncClient, kind: str, after: int = 40, **config: Any
) -> tuple[list[Answer], list[Answer]]:
    """Every batch once before drift (answers 1–8), then `after` answers from answer 9 on."""
    sim = await simulator(keys=KEYS, seed=3, drift_after=9, drift=(kind,), **config)
    before = await ask(sim, http, len(BATCHES))
    after_answers = await ask(sim, http, after, first=len(BATCHES))
    return before, after_answers


# --- before the cue --------------------------------------------------------------------------


async def test_before_answer_n_answers_match_a_simulator_without_drift_and_stats_tell(
    simulator: Start, http: httpx2.AsyncClient
) -> None:
    common = {"keys": KEYS, "seed": 11, "fault_missing_id": 0.2}
    steady = await simulator(**common)
    # Every drift that changes answers ("server_errors" fails requests instead: its own test).
    answer_drifts = tuple(kind for kind in DRIFT_KINDS if kind != "server_errors")
    drifting = await simulator(**common, drift_after=12, drift=answer_drifts)

    steady_answers = await ask(steady, http, 30, prompt=PLAIN_PROMPT)
    early = await ask(drifting, http, 10, prompt=PLAIN_PROMPT)
    assert (await served_stats(drifting, http))["drifting"] is False
    cue = await ask(drifting, http, 1, first=10, prompt=PLAIN_PROMPT)
    at_cue = await served_stats(drifting, http)
    late = await ask(drifting, http, 19, first=11, prompt=PLAIN_PROMPT)

    contents = [answer.content for answer in (*early, *cue, *late)]
    steady_contents = [answer.content for answer in steady_answers]
    assert contents[:11] == steady_contents[:11]
    assert all(
        ours != theirs for ours, theirs in zip(contents[11:], steady_contents[11:], strict=True)
    )
    assert all('"items"' not in content for content in steady_contents)  # not asked for
    assert (at_cue["answers"], at_cue["drifted_answers"], at_cue["drifting"]) == (11, 0, True)
    final = await served_stats(drifting, http)
    assert (final["answers"], final["drifted_answers"]) == (30, 19)
    steady_final = await served_stats(steady, http)
    assert (steady_final["answers"], steady_final["drifted_answers"]) == (30, 0)
    assert steady_final["drifting"] is False


# --- from the cue on, one kind at a time ---------------------------------------------------


async def test_shorter_cuts_summaries_by_about_forty_percent_and_bills_fewer_tokens(
    simulator: Start, http: httpx2.AsyncClient
) -> None:
    before, after = await before_and_after(simulator, http, "shorter", after=len(BATCHES))

    def mean_summary_chars(answers: list[Answer]) -> float:
        return statistics.mean(len(e["summary"]) for a in answers for e in a.entries())

    ratio = mean_summary_chars(after) / mean_summary_chars(before)
    assert 0.45 <= ratio <= 0.75, ratio
    tokens = sum(a.completion_tokens for a in after) / sum(a.completion_tokens for a in before)
    assert 0.4 <= tokens <= 0.85, tokens
    assert all(a.completion_tokens == -(-len(a.content.encode()) // 4) for a in after)
    # Only the summaries changed: the same batches keep their ids and items.
    for old, new in zip(before, after, strict=True):
        assert [(e["id"], e["items"]) for e in old.entries()] == [
            (e["id"], e["items"]) for e in new.entries()
        ]


async def test_malformed_makes_a_large_share_of_answers_unreadable_to_the_engine(
    simulator: Start, http: httpx2.AsyncClient
) -> None:
    before, after = await before_and_after(simulator, http, "malformed")

    assert all(answer.parsed() is not None for answer in before)
    share = sum(answer.parsed() is None for answer in after) / len(after)
    assert 0.2 <= share <= 0.6, share


async def test_missing_ids_leaves_ids_out_of_about_half_the_answers(
    simulator: Start, http: httpx2.AsyncClient
) -> None:
    before, after = await before_and_after(simulator, http, "missing_ids")

    def missing(answer: Answer) -> int:
        parsed = answer.parsed()
        assert parsed is not None  # a batch of five never loses every id
        return len(parsed.missing)

    assert all(missing(answer) == 0 for answer in before)
    share = sum(missing(answer) > 0 for answer in after) / len(after)
    assert 0.3 <= share <= 0.7, share
    assert max(missing(answer) for answer in after) <= len(BATCHES[0]) // 2


async def test_refusals_turn_about_fifteen_percent_of_entries_into_empty_refusals(
    simulator: Start, http: httpx2.AsyncClient
) -> None:
    before, after = await before_and_after(simulator, http, "refusals")

    def refusals(answers: list[Answer]) -> list[dict[str, Any]]:
        return [e for a in answers for e in a.entries() if features_of_result(e).empty_or_refusal]

    assert refusals(before) == []
    refused = refusals(after)
    share = len(refused) / sum(len(a.entries()) for a in after)
    assert 0.07 <= share <= 0.25, share
    assert all(e["summary"] == REFUSAL_TEXT and e["items"] == [] for e in refused)


async def test_fewer_items_halves_the_items_per_chunk(
    simulator: Start, http: httpx2.AsyncClient
) -> None:
    before, after = await before_and_after(simulator, http, "fewer_items", after=len(BATCHES))

    def mean_items(answers: list[Answer]) -> float:
        return statistics.mean(len(e["items"]) for a in answers for e in a.entries())

    assert all(len(e["items"]) >= 2 for a in before for e in a.entries())
    ratio = mean_items(after) / mean_items(before)
    assert 0.3 <= ratio <= 0.65, ratio


async def test_slower_makes_answers_take_about_two_and_a_half_times_as_long(
    simulator: Start, http: httpx2.AsyncClient
) -> None:
    before, after = await before_and_after(
        simulator, http, "slower", after=len(BATCHES), latency_s=(0.02, 0.03)
    )

    server = statistics.median(a.processing_ms for a in after) / statistics.median(
        a.processing_ms for a in before
    )
    assert 1.7 <= server <= 4.0, server
    client = statistics.median(a.wall_s for a in after) / statistics.median(
        a.wall_s for a in before
    )
    assert client >= 1.3, client
    assert [a.content for a in before] == [a.content for a in after]  # same batches, same text


async def test_server_errors_fail_about_a_quarter_of_requests_while_the_drift_lasts(
    simulator: Start, http: httpx2.AsyncClient
) -> None:
    # Answers 1-9 are before the cue, 10-39 drift, from answer 40 on it is over.
    sim = await simulator(
        keys=KEYS, seed=3, drift_after=10, drift=("server_errors",), drift_until=40
    )
    body = {
        "model": MODEL,
        "messages": build_messages(PLAIN_PROMPT, BATCHES[0]),
    }

    async def statuses(answers: int) -> list[int]:
        """Statuses of requests sent until `answers` more have been answered."""
        seen: list[int] = []
        while seen.count(200) < answers:
            response = await http.post(
                f"{sim.base_url}/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {SECRET}"},
            )
            seen.append(response.status_code)
            if response.status_code != 200:
                assert response.json()["error"]["message"]  # shaped like the provider's
        return seen

    before = await statuses(9)
    during = await statuses(30)
    after = await statuses(40)

    assert before == [200] * 9
    failed = [status for status in during if status != 200]
    assert set(failed) <= {500, 502, 503}
    share = len(failed) / len(during)
    assert 0.12 <= share <= 0.4, share
    assert after == [200] * 40  # the drift ends at its answer, failures or not
    stats = await served_stats(sim, http)
    assert stats["faults"]["5xx"] == len(failed)
    assert (stats["answers"], stats["drifted_answers"]) == (79, 30)


async def test_embeddings_move_to_another_region_once_drift_begins(
    simulator: Start, http: httpx2.AsyncClient
) -> None:
    sim = await simulator(keys=KEYS, seed=3, drift_after=3, drift=("embeddings",))
    client = openai.AsyncOpenAI(
        api_key=SECRET, base_url=sim.base_url, max_retries=0, http_client=http
    )
    texts = [chunk.text for chunk in CHUNKS]

    async def vectors() -> np.ndarray:
        answer = await client.embeddings.create(model="text-embedding-3-small", input=texts)
        return np.array([item.embedding for item in answer.data], dtype=np.float64)

    first_answer = await ask(sim, http, 1)
    before = await vectors()
    assert not sim.drifting
    assert np.array_equal(await vectors(), before)  # no chat answer yet: no change
    await ask(sim, http, 1, first=1)  # answer 2: the next one is the cue
    assert sim.drifting
    after = await vectors()

    def spread(rows: np.ndarray) -> float:
        """Mean cosine distance of the rows to their centroid."""
        centroid = rows.mean(axis=0)
        return float(np.mean(1.0 - rows @ centroid / np.linalg.norm(centroid)))

    assert np.allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    # Texts share a direction, as a real model's do: other texts land near the
    # same centroid, and the drift moves it far from there.
    others = np.array(
        [
            item.embedding
            for item in (
                await client.embeddings.create(
                    model="text-embedding-3-small", input=[f"other text {i}" for i in range(40)]
                )
            ).data
        ],
        dtype=np.float64,
    )
    assert sim.drifting  # the others drifted too: compare them with `after`
    assert centroid_cosine_distance(after.mean(axis=0), others) < 0.05
    distance = centroid_cosine_distance(before.mean(axis=0), after)
    assert distance >= 0.3, distance
    assert spread(before) < 0.4 and spread(after) < 0.4, (spread(before), spread(after))
    # Chat answers are untouched by an embeddings-only drift.
    assert (await ask(sim, http, 1))[0].content == first_answer[0].content


# --- configuring it ------------------------------------------------------------------------


def test_the_config_refuses_unknown_drift_kinds_and_a_negative_cue() -> None:
    with pytest.raises(ValueError, match="unknown drift 'louder'"):
        SimulatorConfig(drift_after=5, drift=("shorter", "louder"))
    with pytest.raises(ValueError, match="drift_after"):
        SimulatorConfig(drift_after=-1, drift=("shorter",))
    assert SimulatorConfig(drift_after=5, drift=DRIFT_KINDS).drift == DRIFT_KINDS


def test_command_line_flags_set_the_drift(capsys: pytest.CaptureFixture[str]) -> None:
    config, _, _ = config_from_args(["--drift-after", "50", "--drift", "shorter, slower"])
    assert (config.drift_after, config.drift) == (50, ("shorter", "slower"))
    assert config_from_args([])[0].drift_after == 0
    with pytest.raises(SystemExit):
        config_from_args(["--drift-after", "5", "--drift", "shorter,louder"])
    assert "choose from shorter, malformed" in capsys.readouterr().err


def test_a_job_passes_its_drift_to_the_simulator_it_launches_only_when_cued() -> None:
    cued = SimulatorSettings(drift_after=100, drift=("refusals", "embeddings"))
    config, _, _ = config_from_args(simulator_arguments(cued, port=0))
    assert (config.drift_after, config.drift) == (100, ("refusals", "embeddings"))

    never = SimulatorSettings(drift=("refusals",))
    arguments = simulator_arguments(never, port=0)
    assert "--drift" not in arguments and "--drift-after" not in arguments
    assert config_from_args(arguments)[0].drift_after == 0
