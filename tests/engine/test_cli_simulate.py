"""`crawldeck simulate`: a local provider shaped by the job's [simulator] table and flags."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx2
import openai

from tests.engine.test_cli import cli_env, command, crawldeck, write_job


async def test_simulate_serves_a_per_second_provider_when_told_to(tmp_path: Path) -> None:
    job = write_job(tmp_path, more="burst_s = 60\n")
    process = await asyncio.create_subprocess_exec(
        *command("simulate", job, "--port", "0", "--set", "simulator.burst_s=1"),
        cwd=tmp_path,
        env=cli_env(),
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        announced = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert announced is not None, line
        async with httpx2.AsyncClient() as http:
            sdk = openai.AsyncOpenAI(
                api_key="any-key", base_url=announced.group(1), max_retries=0, http_client=http
            )
            raw = await sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "[id=a] text"}]
            )
        # The job's key allows 100,000 a minute: a second of it is 1,666.
        assert raw.headers["x-ratelimit-limit-requests"] == "100000"
        assert int(raw.headers["x-ratelimit-remaining-requests"]) <= 1666
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=10)


def test_simulate_refuses_a_bucket_larger_than_a_minute_in_one_line(tmp_path: Path) -> None:
    job = write_job(tmp_path)

    done = crawldeck("simulate", job, "--port", "0", "--set", "simulator.burst_s=90", cwd=tmp_path)

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "--set: simulator.burst_s: must be more than 0 and at most 60 (seconds of the per-minute "
        "limit a key's bucket holds: 60 a full minute, 1 the minute enforced per second) "
        "(got 90.0)"
    ]
