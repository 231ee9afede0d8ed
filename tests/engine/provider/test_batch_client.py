"""One key's Files and Batch APIs through the SDK: answers, and failures the engine can classify."""

from __future__ import annotations

import json
import logging

import pytest

from engine.provider.batch_client import BatchCallError
from engine.provider.client import CallResult, ProviderClients, chat_body
from engine.provider.redaction import RedactingLogFilter
from engine.simulation.simulator import ProviderSimulator, SimKey, SimulatorConfig

SECRET = "sk-batch-client-0123456789"


async def test_a_file_is_uploaded_submitted_followed_and_read() -> None:
    clients = ProviderClients()
    async with ProviderSimulator(
        SimulatorConfig(keys=(SimKey(SECRET, None, None),), batch_delay_s=0.0)
    ) as sim:
        clients.add_key("sim/k1", SECRET, sim.base_url)
        client = clients.batch_client("sim/k1")
        body = chat_body("gpt-4o-mini", [{"role": "user", "content": "[id=a1] some words"}], 0.0)
        line = {"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions", "body": body}
        file_id = await client.upload(json.dumps(line).encode() + b"\n", "in.jsonl")
        created = await client.submit(file_id, "24h", {"crawldeck_job": "t"})
        assert created.state == "validating" and created.total == 1
        assert await client.find(file_id) == created
        done = await client.status(created.batch_id)
        assert done.ended and done.state == "completed" and done.completed == 1
        assert done.output_file_id is not None
        (answer,) = (await client.content(done.output_file_id)).splitlines()
        result = clients.completion(json.loads(answer)["response"]["body"], {}, 0.0)
        assert isinstance(result, CallResult) and result.content is not None
        assert '"a1"' in result.content
    await clients.aclose()


async def test_failures_carry_what_classifies_them() -> None:
    clients = ProviderClients()
    async with ProviderSimulator(SimulatorConfig(keys=(SimKey(SECRET, None, None),))) as sim:
        clients.add_key("sim/k1", SECRET, sim.base_url)
        clients.add_key("sim/k2", "sk-unknown-0123456789", sim.base_url)
        with pytest.raises(BatchCallError) as missing:
            await clients.batch_client("sim/k1").status("batch_nope")
        assert missing.value.status == 404
        with pytest.raises(BatchCallError) as refused:
            await clients.batch_client("sim/k2").upload(b"{}\n", "in.jsonl")
        assert refused.value.status == 401
        assert "sk-unknown-0123456789" not in str(refused.value)
        url = sim.base_url
    clients.add_key("sim/k3", SECRET, url)  # the simulator is gone: nothing listens there
    with pytest.raises(BatchCallError) as gone:
        await clients.batch_client("sim/k3").status("batch_x")
    assert gone.value.status is None and not gone.value.timed_out
    await clients.aclose()


async def test_the_sdks_logs_are_redacted_from_the_first_batch_client() -> None:
    clients = ProviderClients()
    clients.add_key("sim/k1", SECRET, "http://127.0.0.1:9/v1")
    sdk_logger = logging.getLogger("openai._base_client")
    assert not any(isinstance(f, RedactingLogFilter) for f in sdk_logger.filters)

    clients.batch_client("sim/k1")

    assert any(isinstance(f, RedactingLogFilter) for f in sdk_logger.filters)
    await clients.aclose()
    assert not any(isinstance(f, RedactingLogFilter) for f in sdk_logger.filters)
