"""Both kinds of provider bucket, as the real SDK sees them over loopback.

A full-minute provider lets a fresh key spend its whole per-minute limit at
once; a per-second one (`burst_s = 1`) only a second's worth before 429s.
The `x-ratelimit-*` headers tell the truth in both: `limit` the per-minute
limit, `remaining` what the bucket holds now, `reset` when it is full again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from engine.config.settings import KeySettings, SimulatorSettings
from engine.simulation.rate_buckets import format_duration
from engine.simulation.simulator import ProviderSimulator, SimKey, SimulatorConfig
from engine.simulation.simulator_launch import launched_simulator
from tests.engine.conftest import job_config, write_records

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "Summarise.\n[id=a] One short chunk."}]


class FakeClock:
    """Monotonic seconds that move only when the test says so: the buckets' time."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(limits=httpx2.Limits(max_connections=300)) as shared:
        yield shared


async def serving(config: SimulatorConfig, clock: FakeClock) -> ProviderSimulator:
    simulator = ProviderSimulator(config, clock=clock)
    await simulator.start()
    return simulator


def client(base_url: str, secret: str, http: httpx2.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=secret, base_url=base_url, max_retries=0, http_client=http)


async def burst(sdk: openai.AsyncOpenAI, count: int, **kwargs: Any) -> tuple[list[Any], list[Any]]:
    """`count` requests at once: (the answered raw responses, the 429 errors)."""

    async def one() -> Any:
        try:
            return await sdk.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, **kwargs
            )
        except openai.RateLimitError as refused:
            return refused

    outcomes = await asyncio.gather(*(one() for _ in range(count)))
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    return [o for o in outcomes if not isinstance(o, openai.RateLimitError)], refused


async def test_a_full_minute_bucket_admits_a_whole_minute_of_requests_at_once(
    http: httpx2.AsyncClient,
) -> None:
    clock = FakeClock()
    simulator = await serving(SimulatorConfig(keys=(SimKey("sk-minute", 240, None),)), clock)
    try:
        sdk = client(simulator.base_url, "sk-minute", http)

        answered, refused = await burst(sdk, 240)
        assert (len(answered), len(refused)) == (240, 0)
        remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in answered)
        assert remaining == list(range(240))  # each answer saw what the bucket then held
        assert {r.headers["x-ratelimit-limit-requests"] for r in answered} == {"240"}

        answered, refused = await burst(sdk, 5)
        assert (len(answered), len(refused)) == (0, 5)
        headers = refused[0].response.headers
        assert headers["x-ratelimit-limit-requests"] == "240"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"] == "1m0s"  # a minute to fill again
        assert headers["retry-after-ms"] == "250"  # 240 a minute: one every 0.25 s
    finally:
        await simulator.stop()


async def test_a_per_second_bucket_admits_a_second_of_requests_then_paces(
    http: httpx2.AsyncClient,
) -> None:
    clock = FakeClock()
    config = SimulatorConfig(keys=(SimKey("sk-second", 240, None),), burst_s=1)
    simulator = await serving(config, clock)
    try:
        sdk = client(simulator.base_url, "sk-second", http)

        answered, refused = await burst(sdk, 240)
        assert (len(answered), len(refused)) == (4, 236)  # 240 a minute is 4 a second
        remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in answered)
        assert remaining == [0, 1, 2, 3]
        headers = refused[0].response.headers
        assert headers["x-ratelimit-limit-requests"] == "240"  # still the per-minute limit
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"] == "1s"  # a second to fill again
        assert headers["retry-after-ms"] == "250"  # the same pace as the full-minute key

        clock.now += 0.25
        answered, _ = await burst(sdk, 10)
        assert len(answered) == 1
        clock.now += 60.0  # a minute idle fills only the second
        answered, _ = await burst(sdk, 10)
        assert len(answered) == 4
    finally:
        await simulator.stop()


async def test_a_per_second_tokens_bucket_reports_its_quanta_in_the_headers(
    http: httpx2.AsyncClient,
) -> None:
    clock = FakeClock()
    keys = (SimKey("sk-minute", None, 60_000), SimKey("sk-second", None, 60_000))
    minute = await serving(SimulatorConfig(keys=keys[:1]), clock)
    second = await serving(SimulatorConfig(keys=keys[1:], burst_s=1), clock)
    try:
        full = await client(
            minute.base_url, "sk-minute", http
        ).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=300)
        paced_sdk = client(second.base_url, "sk-second", http)
        paced = await paced_sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=300
        )
        charge = 60_000 - int(full.headers["x-ratelimit-remaining-tokens"])
        assert charge > 300  # the prompt estimate + max_tokens
        assert paced.headers["x-ratelimit-limit-tokens"] == "60000"
        assert int(paced.headers["x-ratelimit-remaining-tokens"]) == 1_000 - charge
        assert paced.headers["x-ratelimit-reset-tokens"] == format_duration(charge / 1_000)

        # Bigger than the second's 1,000 tokens but within the minute: admitted on a
        # full bucket, which it leaves in debt; the next must wait the debt out.
        clock.now += 5.0
        big = await paced_sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=2_500
        )
        assert big.headers["x-ratelimit-remaining-tokens"] == "0"
        with pytest.raises(openai.RateLimitError) as caught:
            await paced_sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
        assert int(caught.value.response.headers["retry-after-ms"]) > 1_500
    finally:
        await minute.stop()
        await second.stop()


async def test_the_job_files_burst_reaches_the_simulator_in_its_own_process(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    config, _ = job_config(tmp_path, write_records(tmp_path / "in.txt", 1), "http://127.0.0.1:0/v1")
    (provider,) = config.providers
    provider = replace(provider, keys=(KeySettings(env="K", alias="k1", rpm=600, tpm=10**7),))
    settings = SimulatorSettings(latency_s=(0.0, 0.0), burst_s=1)
    config = replace(config, providers=(provider,), simulator=settings)
    secrets = {"sim/k1": "sim-burst-test-secret"}

    async with launched_simulator(config, secrets) as urls:
        sdk = client(urls["sim"], secrets["sim/k1"], http)
        started = time.monotonic()
        answered, refused = await burst(sdk, 100)
        took = time.monotonic() - started

    # 600 a minute is 10 a second; the bucket refills meanwhile at that rate.
    assert 10 <= len(answered) <= 10 + 10 * took + 1
    assert len(refused) == 100 - len(answered)
    assert {r.headers["x-ratelimit-limit-requests"] for r in answered} == {"600"}
    assert max(int(r.headers["x-ratelimit-remaining-requests"]) for r in answered) <= 9
