"""The provider simulator behaves like OpenAI's API, as the real SDK sees it."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import statistics
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engine.provider.redaction import mask_secret
from engine.simulation.rate_buckets import KeyBudget, TokenBucket, format_duration
from engine.simulation.simulator import (
    ProviderSimulator,
    SimKey,
    SimulatorConfig,
    config_from_args,
    draw_latency,
    parse_chunks,
    summarize,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s)$|^\d+ms$")


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    """The one connection pool every SDK client in a test shares."""
    async with httpx2.AsyncClient() as shared:
        yield shared


async def running(config: SimulatorConfig, **kwargs: Any) -> ProviderSimulator:
    simulator = ProviderSimulator(config, **kwargs)
    await simulator.start()
    return simulator


@pytest.fixture
async def simulators() -> AsyncIterator[Callable[..., Awaitable[ProviderSimulator]]]:
    """Starts simulators for a test and stops them all afterwards."""
    started: list[ProviderSimulator] = []

    async def start(config: SimulatorConfig, **kwargs: Any) -> ProviderSimulator:
        simulator = await running(config, **kwargs)
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        await simulator.stop()


def client_for(
    simulator: ProviderSimulator, secret: str, http: httpx2.AsyncClient, **kwargs: Any
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=secret, base_url=simulator.base_url, max_retries=0, http_client=http, **kwargs
    )


SYSTEM = "Answer with JSON."


def user_message(chunks: list[tuple[str, str]]) -> str:
    lines = "\n".join(f"[id={chunk_id}] {text}" for chunk_id, text in chunks)
    return f"Summarise every chunk.\n\n{lines}"


def chunk_prompt(chunks: list[tuple[str, str]]) -> list[ChatCompletionMessageParam]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user_message(chunks)},
    ]


async def ask(client: openai.AsyncOpenAI, chunks: list[tuple[str, str]], **kwargs: Any) -> Any:
    return await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=chunk_prompt(chunks), **kwargs
    )


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for something the server does on its own schedule."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


CHUNKS = [
    ("doc1-0", "The harbour froze in January and the ferries stopped running."),
    ("doc1-1", "Fishermen walked across the ice to the island.\nSome of them stayed for weeks."),
    ("doc2-0", "Prices of bread doubled."),
]


# --- completions ----------------------------------------------------------------------------


async def test_a_completion_answers_every_chunk_id_in_order_with_usage(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-alpha-0001", 60, 100_000),)))
    client = client_for(simulator, "sk-alpha-0001", http)

    raw = await ask(client, CHUNKS)
    completion = raw.parse()

    assert raw.status_code == 200
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.choices[0].finish_reason == "stop"
    content = completion.choices[0].message.content
    results = json.loads(content)["results"]
    assert [r["id"] for r in results] == [chunk_id for chunk_id, _ in CHUNKS]
    assert all(8 <= len(r["summary"].split()) <= 30 for r in results)
    usage = completion.usage
    prompt_bytes = len(SYSTEM.encode()) + len(user_message(CHUNKS).encode())
    assert usage.prompt_tokens == math.ceil(prompt_bytes / 4)
    assert usage.completion_tokens == math.ceil(len(content.encode()) / 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_summaries_are_deterministic_and_follow_the_chunk_text(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    first = await simulators(SimulatorConfig(keys=(SimKey("sk-a", None, None),), seed=1))
    second = await simulators(SimulatorConfig(keys=(SimKey("sk-a", None, None),), seed=99))

    answers = []
    for simulator in (first, second):
        raw = await ask(client_for(simulator, "sk-a", http), CHUNKS)
        answers.append(raw.parse().choices[0].message.content)

    assert answers[0] == answers[1]
    summary = json.loads(answers[0])["results"][1]["summary"]
    assert "Fishermen" in summary
    assert summarize("") == summarize("")
    assert 8 <= len(summarize("").split()) <= 30
    assert 8 <= len(summarize("word " * 500).split()) <= 30


def test_a_chunk_runs_until_the_next_id_line() -> None:
    prompt = "Intro line\n[id=a] first\nstill first\n[id=b] second\nnot [id=c] a start"
    assert parse_chunks(prompt) == [
        ("a", "first\nstill first"),
        ("b", "second\nnot [id=c] a start"),
    ]


async def test_a_prompt_without_chunk_lines_gets_empty_results(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", None, None),)))
    completion = await client_for(simulator, "sk-a", http).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}]
    )
    assert json.loads(completion.choices[0].message.content or "") == {"results": []}


async def test_an_answer_longer_than_max_tokens_is_cut_with_finish_reason_length(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", None, None),)))
    raw = await ask(client_for(simulator, "sk-a", http), CHUNKS, max_tokens=10)
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 10


# --- rate limits ----------------------------------------------------------------------------


async def test_every_response_carries_plausible_rate_limit_headers(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", 60, 10_000),)))
    client = client_for(simulator, "sk-a", http)

    ok = await ask(client, CHUNKS, max_tokens=500)
    prompt_tokens = ok.parse().usage.prompt_tokens

    headers = ok.headers
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    assert headers["x-ratelimit-remaining-requests"] == "59"
    # Admission charges the prompt estimate plus the whole max_tokens budget.
    assert int(headers["x-ratelimit-remaining-tokens"]) == 10_000 - prompt_tokens - 500
    assert DURATION.match(headers["x-ratelimit-reset-requests"])
    assert DURATION.match(headers["x-ratelimit-reset-tokens"])
    assert headers["x-request-id"].startswith("req_")

    limited = await simulators(SimulatorConfig(keys=(SimKey("sk-b", 1, 10_000),)))
    limited_client = client_for(limited, "sk-b", http)
    await ask(limited_client, CHUNKS)
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(limited_client, CHUNKS)
    rejected = caught.value.response.headers
    for name in ("limit", "remaining", "reset"):
        for axis in ("requests", "tokens"):
            assert f"x-ratelimit-{name}-{axis}" in rejected
    assert rejected["x-ratelimit-remaining-requests"] == "0"
    assert rejected["x-request-id"] != headers["x-request-id"]


async def test_exceeding_rpm_gives_429_until_the_bucket_refills(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    clock = FakeClock()
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", 6, None),)), clock=clock)
    client = client_for(simulator, "sk-a", http)

    for _ in range(6):  # a fresh key may burst its whole minute
        await ask(client, CHUNKS)
    with pytest.raises(openai.RateLimitError) as first:
        await ask(client, CHUNKS)
    with pytest.raises(openai.RateLimitError) as second:
        await ask(client, CHUNKS)

    response = first.value.response
    assert response.status_code == 429
    assert response.headers["retry-after"] == "10"  # 6 rpm refill one request every 10 s
    assert response.headers["retry-after-ms"] == "10000"
    error = first.value.body
    assert isinstance(error, dict)
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    assert error["param"] is None
    assert "on requests per min (RPM): Limit 6, Used 6, Requested 1." in error["message"]
    assert "Please try again in 10s." in error["message"]
    # A rejected request takes nothing, so the wait does not grow.
    assert second.value.response.headers["retry-after-ms"] == "10000"

    clock.advance(4.0)
    with pytest.raises(openai.RateLimitError) as later:
        await ask(client, CHUNKS)
    assert later.value.response.headers["retry-after-ms"] == "6000"

    clock.advance(6.0)
    assert (await ask(client, CHUNKS)).status_code == 200
    with pytest.raises(openai.RateLimitError):
        await ask(client, CHUNKS)
    assert simulator.stats.rate_limited == 4
    assert simulator.stats.rate_limited_by_kind == {"requests": 4, "tokens": 0}


async def test_the_requests_bucket_refills_in_real_time(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", 120, None),)))
    client = client_for(simulator, "sk-a", http)
    answers = await asyncio.gather(
        *(ask(client, CHUNKS) for _ in range(120)), return_exceptions=True
    )
    assert not [a for a in answers if isinstance(a, BaseException)]  # the burst fits

    # On a slow machine the bucket may have refilled a little meanwhile: spend it.
    async with asyncio.timeout(10):
        while True:
            try:
                await ask(client, CHUNKS)
            except openai.RateLimitError as error:
                caught = error
                break
    wait_ms = int(caught.response.headers["retry-after-ms"])
    assert 0 < wait_ms <= 500  # 120 rpm refill two requests a second
    assert caught.response.headers["retry-after"] == "1"

    await asyncio.sleep(wait_ms / 1000)
    assert (await ask(client, CHUNKS)).status_code == 200


async def test_exceeding_tpm_gives_429_of_type_tokens(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    clock = FakeClock()
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", None, 1_200),)), clock=clock)
    client = client_for(simulator, "sk-a", http)

    first = await ask(client, CHUNKS, max_tokens=600)
    assert "x-ratelimit-limit-requests" not in first.headers  # no RPM limit, no RPM headers
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(client, CHUNKS, max_tokens=600)

    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "tokens"
    assert error["code"] == "rate_limit_exceeded"
    assert "on tokens per min (TPM): Limit 1200" in error["message"]
    headers = caught.value.response.headers
    assert int(headers["retry-after-ms"]) > 0
    assert int(headers["retry-after"]) == math.ceil(int(headers["retry-after-ms"]) / 1000)

    clock.advance(int(headers["retry-after-ms"]) / 1000)
    assert (await ask(client, CHUNKS, max_tokens=600)).status_code == 200


async def test_a_request_larger_than_the_tpm_limit_is_refused_without_retry_after(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", None, 1_000),)))
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(client_for(simulator, "sk-a", http), CHUNKS, max_tokens=5_000)
    assert "Request too large" in str(caught.value)
    assert "retry-after" not in caught.value.response.headers
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "1000"


async def test_an_exhausted_quota_always_gets_insufficient_quota(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    config = SimulatorConfig(keys=(SimKey("sk-broke", 60, 10_000, quota_exhausted=True),))
    simulator = await simulators(config)
    client = client_for(simulator, "sk-broke", http)

    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(client, CHUNKS)
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["type"] == "insufficient_quota"
        assert error["code"] == "insufficient_quota"
        assert error["message"].startswith("You exceeded your current quota")
        headers = caught.value.response.headers
        assert "retry-after" not in headers
        assert "retry-after-ms" not in headers
        assert headers["x-ratelimit-remaining-requests"] == "60"
    assert simulator.stats.quota_rejected == 2
    assert simulator.stats.too_many_requests == 2


async def test_unknown_or_missing_keys_get_401_invalid_api_key(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-known", 60, None),)))
    with pytest.raises(openai.AuthenticationError) as caught:
        await ask(client_for(simulator, "sk-stranger-123456", http), CHUNKS)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert "sk-stranger" not in error["message"]  # secrets are masked

    response = await http.post(f"{simulator.base_url}/chat/completions", json={})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert simulator.stats.unauthorized == 2


async def test_default_limits_admit_unknown_keys_each_with_its_own_buckets(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(default_rpm=1, default_tpm=None))
    await ask(client_for(simulator, "sk-one", http), CHUNKS)
    await ask(client_for(simulator, "sk-two", http), CHUNKS)
    with pytest.raises(openai.RateLimitError):
        await ask(client_for(simulator, "sk-one", http), CHUNKS)
    assert simulator.stats.requests_by_key == {"sk-one": 2, "sk-two": 1}


# --- faults ---------------------------------------------------------------------------------


async def test_a_5xx_fault_is_an_api_status_error(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", 60, None),), fault_5xx=1.0))
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(client_for(simulator, "sk-a", http), CHUNKS)
    assert caught.value.status_code in (500, 502, 503)
    assert isinstance(caught.value.body, dict)
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "59"
    assert simulator.stats.faults["5xx"] == 1


async def test_a_reset_fault_drops_the_connection(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(
        SimulatorConfig(keys=(SimKey("sk-a", None, None),), fault_reset=1.0)
    )
    with pytest.raises(openai.APIConnectionError):
        await ask(client_for(simulator, "sk-a", http), CHUNKS)
    assert simulator.stats.faults["reset"] == 1


async def test_a_hang_fault_times_the_client_out_and_stop_still_returns(
    http: httpx2.AsyncClient,
) -> None:
    simulator = await running(SimulatorConfig(keys=(SimKey("sk-a", None, None),), fault_hang=1.0))
    client = client_for(simulator, "sk-a", http)
    with pytest.raises(openai.APITimeoutError):
        await ask(client, CHUNKS, timeout=0.2)

    pending = asyncio.create_task(ask(client, CHUNKS, timeout=60))
    await eventually(lambda: simulator.stats.faults["hang"] == 2)
    await asyncio.wait_for(simulator.stop(), timeout=5)  # not the hour-long hang
    with pytest.raises(openai.APIConnectionError):
        await pending


async def test_a_malformed_fault_gives_a_body_or_a_content_that_is_not_json(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(
        SimulatorConfig(keys=(SimKey("sk-a", None, None),), fault_malformed=1.0, seed=3)
    )
    client = client_for(simulator, "sk-a", http)
    broken_bodies = prose_contents = 0
    for _ in range(12):
        raw = await ask(client, CHUNKS)
        assert raw.status_code == 200
        try:
            completion = raw.parse()
        except json.JSONDecodeError:
            broken_bodies += 1
            continue
        with pytest.raises(json.JSONDecodeError):
            json.loads(completion.choices[0].message.content or "")
        prose_contents += 1
    assert broken_bodies > 0
    assert prose_contents > 0
    assert simulator.stats.faults["malformed"] == 12
    assert simulator.stats.completions_ok == 0
    assert simulator.stats.chunk_ids_answered == 0


async def test_a_missing_id_fault_drops_exactly_one_id(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(
        SimulatorConfig(keys=(SimKey("sk-a", None, None),), fault_missing_id=1.0)
    )
    raw = await ask(client_for(simulator, "sk-a", http), CHUNKS)
    ids = [r["id"] for r in json.loads(raw.parse().choices[0].message.content)["results"]]
    expected = [chunk_id for chunk_id, _ in CHUNKS]
    assert len(ids) == len(expected) - 1
    assert set(ids) < set(expected)
    assert ids == [i for i in expected if i in ids]  # order kept
    assert simulator.stats.chunk_ids_answered == 2


async def test_fault_rates_can_change_mid_run(simulators: Any, http: httpx2.AsyncClient) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", None, None),), fault_5xx=1.0))
    client = client_for(simulator, "sk-a", http)
    with pytest.raises(openai.APIStatusError):
        await ask(client, CHUNKS)

    simulator.set_faults(fault_5xx=0.0)
    assert (await ask(client, CHUNKS)).status_code == 200
    with pytest.raises(ValueError):
        simulator.set_faults(fault_reset=1.5)
    assert simulator.config.fault_reset == 0.0


async def test_faults_follow_the_seed(simulators: Any, http: httpx2.AsyncClient) -> None:
    outcomes = []
    for _ in range(2):
        config = SimulatorConfig(keys=(SimKey("sk-a", None, None),), fault_5xx=0.5, seed=7)
        simulator = await simulators(config)
        client = client_for(simulator, "sk-a", http)
        run = []
        for _ in range(16):
            try:
                run.append((await ask(client, CHUNKS)).status_code)
            except openai.APIStatusError as error:
                run.append(error.status_code)
        outcomes.append(run)
    assert outcomes[0] == outcomes[1]
    assert 200 in outcomes[0]
    assert set(outcomes[0]) - {200}


# --- embeddings and models ------------------------------------------------------------------


async def test_embeddings_are_deterministic_unit_vectors(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    config = SimulatorConfig(keys=(SimKey("sk-a", 60, 10_000),), embedding_dim=32)
    first = client_for(await simulators(config), "sk-a", http)
    second = client_for(await simulators(config), "sk-a", http)

    texts = ["a frozen harbour", "bread prices"]
    answer = await first.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    again = await second.embeddings.create(
        model=EMBEDDING_MODEL, input=texts, encoding_format="float"
    )
    single = await first.embeddings.create(model=EMBEDDING_MODEL, input=texts[1])

    vectors = np.array([d.embedding for d in answer.data])
    assert vectors.shape == (2, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors, np.array([d.embedding for d in again.data]), atol=1e-6)
    assert np.allclose(vectors[1], single.data[0].embedding, atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])
    assert answer.usage.prompt_tokens == math.ceil(len("a frozen harbourbread prices") / 4)


async def test_embeddings_share_the_keys_rate_limits(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", 1, None),)))
    client = client_for(simulator, "sk-a", http)
    raw = await client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input="x")
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        await ask(client, CHUNKS)


async def test_models_lists_a_few_models(simulators: Any, http: httpx2.AsyncClient) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", None, None),)))
    models = await client_for(simulator, "sk-a", http).models.list()
    assert MODEL in [model.id for model in models.data]


async def test_stats_count_what_happened(simulators: Any, http: httpx2.AsyncClient) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", 2, None),)))
    client = client_for(simulator, "sk-a", http)
    await ask(client, CHUNKS)
    await client.embeddings.create(model=EMBEDDING_MODEL, input="x")
    with pytest.raises(openai.RateLimitError):
        await ask(client, CHUNKS)

    stats = simulator.stats
    assert stats.requests == 3
    assert stats.requests_by_key == {"sk-a": 3}
    assert stats.completions_ok == 1
    assert stats.embeddings_ok == 1
    assert stats.chunk_ids_answered == len(CHUNKS)
    assert stats.rate_limited == 1
    served = (await http.get(simulator.base_url.removesuffix("/v1") + "/_sim/stats")).json()
    assert served["completions_ok"] == 1
    assert served["requests"] == 4  # this request counts too


async def test_the_stats_endpoint_names_keys_only_by_their_hints(
    simulators: Any, http: httpx2.AsyncClient
) -> None:
    # `crawldeck simulate` serves real jobs, with real keys, to whoever asks.
    key = "sk-proj-" + "Nd5Kq8Wz2Xc7Vb4Mn1Lj9Hg6Fd3Sa0Pt"
    simulator = await simulators(SimulatorConfig(keys=(SimKey(key, 60, None),)))
    await ask(client_for(simulator, key, http), CHUNKS)

    served = (await http.get(simulator.base_url.removesuffix("/v1") + "/_sim/stats")).text

    assert json.loads(served)["requests_by_key"] == {mask_secret(key): 1}
    assert all(key[i : i + 8] not in served for i in range(len(key) - 7))
    assert simulator.stats.requests_by_key == {key: 1}  # in memory, as before


async def test_a_bad_request_body_is_a_400(simulators: Any, http: httpx2.AsyncClient) -> None:
    simulator = await simulators(SimulatorConfig(keys=(SimKey("sk-a", 60, None),)))
    with pytest.raises(openai.BadRequestError):
        await client_for(simulator, "sk-a", http).chat.completions.create(model=MODEL, messages=[])
    assert simulator.stats.bad_requests == 1


# --- the rate-limit arithmetic --------------------------------------------------------------


def test_durations_are_written_the_way_openai_writes_them() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(0.12) == "120ms"
    assert format_duration(0.0001) == "1ms"
    assert format_duration(1) == "1s"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(17.18) == "17.18s"
    assert format_duration(360) == "6m0s"
    assert format_duration(3600) == "1h0m0s"


def test_a_bucket_refills_continuously_up_to_its_limit() -> None:
    bucket = TokenBucket(60, now=0.0)
    bucket.take(60, now=0.0)
    assert bucket.remaining(now=0.0) == 0
    assert bucket.wait_for(1, now=0.0) == pytest.approx(1.0)
    assert bucket.remaining(now=2.5) == 2
    assert bucket.remaining(now=600.0) == 60
    assert bucket.seconds_until_full(now=600.0) == 0


def test_admission_names_the_bucket_with_the_longer_wait() -> None:
    budget = KeyBudget(rpm=60, tpm=600, now=0.0)
    assert budget.admit(590, now=0.0).admitted
    refused = budget.admit(100, now=0.0)
    assert not refused.admitted
    assert refused.limited_by == "tokens"
    assert refused.retry_after_s == pytest.approx(9.0)  # 90 tokens at 10 per second
    assert refused.used == 590
    assert budget.headers(now=0.0)["x-ratelimit-remaining-tokens"] == "10"
    too_large = budget.admit(601, now=0.0)
    assert too_large.too_large


def test_a_lognormal_latency_puts_the_range_at_its_5th_and_95th_percentiles() -> None:
    rng = random.Random(3)
    draws = sorted(draw_latency(rng, (0.5, 2.0), "lognormal") for _ in range(40_000))

    cut = statistics.quantiles(draws, n=20)  # 5 %, 10 %, ..., 95 %
    assert cut[0] == pytest.approx(0.5, rel=0.03)
    assert cut[-1] == pytest.approx(2.0, rel=0.03)
    assert statistics.median(draws) == pytest.approx(1.0, rel=0.03)  # the geometric middle
    assert draws[-1] > 3.0  # a tail above the range, as real providers have
    uniform = [draw_latency(rng, (0.5, 2.0), "uniform") for _ in range(1000)]
    assert min(uniform) >= 0.5 and max(uniform) <= 2.0
    assert draw_latency(rng, (0.0, 0.0), "lognormal") == 0.0


def test_the_simulator_refuses_a_burst_or_a_latency_it_cannot_model() -> None:
    with pytest.raises(ValueError, match="burst_s"):
        SimulatorConfig(burst_s=0)
    with pytest.raises(ValueError, match="burst_s"):
        SimulatorConfig(burst_s=61)
    with pytest.raises(ValueError, match="lognormal"):
        SimulatorConfig(latency_s=(0.0, 2.0), latency_distribution="lognormal")
    with pytest.raises(ValueError, match="latency_distribution"):
        SimulatorConfig(latency_distribution="normal")


# --- as a process ---------------------------------------------------------------------------


def test_command_line_arguments_become_a_config() -> None:
    config, host, port = config_from_args(
        ["--port", "0", "--key", "sk:a:b:60:1000", "--key", "sk-two::", "--quota-exhausted",
         "sk-two", "--latency", "0.5,2.0", "--per-token", "0.0005", "--fault-5xx", "0.02",
         "--fault-missing-id", "0.1", "--seed", "4"]
    )  # fmt: skip
    assert (host, port) == ("127.0.0.1", 0)
    assert config.keys == (
        SimKey("sk:a:b", 60, 1000),
        SimKey("sk-two", None, None, quota_exhausted=True),
    )
    assert config.latency_s == (0.5, 2.0)
    assert config.seconds_per_output_token == 0.0005
    assert config.fault_5xx == 0.02
    assert config.fault_missing_id == 0.1
    assert config.seed == 4


def test_keys_can_come_from_the_environment_to_keep_secrets_off_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "SIM_KEYS",
        json.dumps([
            {"secret": "sk-env", "rpm": 60, "tpm": None},
            {"secret": "sk-broke", "rpm": None, "tpm": 100, "quota_exhausted": True},
        ]),
    )  # fmt: skip
    config, _, _ = config_from_args(["--keys-from-env", "SIM_KEYS", "--key", "sk-cli:1:2"])
    assert config.keys == (
        SimKey("sk-cli", 1, 2),
        SimKey("sk-env", 60, None),
        SimKey("sk-broke", None, 100, quota_exhausted=True),
    )
    monkeypatch.setenv("SIM_KEYS", '[{"secret": "sk-env", "rpm": -5}]')
    with pytest.raises(SystemExit):
        config_from_args(["--keys-from-env", "SIM_KEYS"])


async def test_the_process_announces_its_url_serves_and_exits_on_sigterm(
    http: httpx2.AsyncClient,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.simulation.simulator",
        "--port", "0", "--key", "sk-proc:60:100000", "--seed", "1",
        cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        announced = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert announced is not None, line
        client = openai.AsyncOpenAI(
            api_key="sk-proc", base_url=announced.group(1), max_retries=0, http_client=http
        )
        raw = await ask(client, CHUNKS)
        assert len(json.loads(raw.parse().choices[0].message.content)["results"]) == 3

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        assert await process.stdout.read() == b""  # exactly one line, ever
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
