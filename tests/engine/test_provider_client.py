"""How provider answers become outcomes the dispatcher acts on (real SDK, real simulator)."""

from __future__ import annotations

from engine.provider_client import CallFailure, CallResult, FailureKind, ProviderClients
from tests.engine.conftest import sim_keys

MESSAGES = [{"role": "user", "content": "[id=a] hello there\n[id=b] general kenobi"}]


async def test_an_answer_carries_usage_and_rate_headers(simulator) -> None:
    sim = await simulator(keys=sim_keys([("k", 600, 100_000)]))
    clients = ProviderClients()
    clients.add_key("sim/k", "secret-k", sim.base_url)
    try:
        outcome = await clients.chat("sim/k", "gpt-4o-mini", MESSAGES, timeout_s=5)
    finally:
        await clients.aclose()

    assert isinstance(outcome, CallResult)
    assert outcome.prompt_tokens > 0 and outcome.completion_tokens > 0
    assert outcome.headers["x-ratelimit-limit-requests"] == "600"


async def test_a_request_larger_than_the_whole_token_limit_is_a_bad_request(simulator) -> None:
    sim = await simulator(keys=sim_keys([("k", 600, 5)]))
    clients = ProviderClients()
    clients.add_key("sim/k", "secret-k", sim.base_url)
    try:
        outcome = await clients.chat("sim/k", "gpt-4o-mini", MESSAGES, timeout_s=5)
    finally:
        await clients.aclose()

    assert isinstance(outcome, CallFailure)
    assert outcome.kind is FailureKind.BAD_REQUEST  # waiting for the budget would never help


async def test_quota_auth_and_server_errors_are_told_apart(simulator) -> None:
    keys = sim_keys([("ok", 600, 100_000), ("broke", 600, 100_000)])
    from dataclasses import replace

    sim = await simulator(keys=(keys[0], replace(keys[1], quota_exhausted=True)))
    clients = ProviderClients()
    clients.add_key("sim/broke", "secret-broke", sim.base_url)
    clients.add_key("sim/wrong", "not-a-key", sim.base_url)
    clients.add_key("sim/ok", "secret-ok", sim.base_url)
    try:
        quota = await clients.chat("sim/broke", "gpt-4o-mini", MESSAGES, timeout_s=5)
        auth = await clients.chat("sim/wrong", "gpt-4o-mini", MESSAGES, timeout_s=5)
        sim.set_faults(fault_5xx=1.0)
        server = await clients.chat("sim/ok", "gpt-4o-mini", MESSAGES, timeout_s=5)
        sim.set_faults(fault_5xx=0.0, fault_reset=1.0)
        reset = await clients.chat("sim/ok", "gpt-4o-mini", MESSAGES, timeout_s=5)
        sim.set_faults(fault_reset=0.0, fault_hang=1.0, hang_s=30)
        hang = await clients.chat("sim/ok", "gpt-4o-mini", MESSAGES, timeout_s=0.3)
    finally:
        await clients.aclose()

    assert isinstance(quota, CallFailure) and quota.kind is FailureKind.QUOTA
    assert isinstance(auth, CallFailure) and auth.kind is FailureKind.AUTH
    assert "not-a-key" not in auth.message
    assert isinstance(server, CallFailure) and server.kind is FailureKind.SERVER
    assert isinstance(reset, CallFailure) and reset.kind is FailureKind.CONNECTION
    assert isinstance(hang, CallFailure) and hang.kind is FailureKind.TIMEOUT
