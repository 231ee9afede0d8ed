"""`crawldeck demo --metrics` under the dashboard: the same endpoint while the screen is drawn.

The dashboard embeds the engine; the endpoint reads the same engine's
snapshots and stops when the dashboard quits.  Run in a real terminal
(tmux), scraped over HTTP from outside.
"""

from __future__ import annotations

import asyncio
import shlex
import socket
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.engine.observe.test_metrics_endpoint import FAMILIES, Scrape
from tests.tui.test_demo_tmux import DEMO_FLAGS, STEP_S, WAIT_S, private_tmux, until_no_process_has


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def scrape(port: int) -> Scrape:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode("utf-8"))

    return Scrape(await asyncio.to_thread(get))


async def test_the_dashboard_serves_metrics_of_the_job_it_shows_until_it_quits(
    tmp_path: Path,
) -> None:
    crawldeck = Path(sys.executable).with_name("crawldeck")
    port = free_port()
    marker = uuid.uuid4().hex
    async with private_tmux(tmp_path, marker) as terminal:
        demo = shlex.join(
            [str(crawldeck), "demo", "--metrics", str(port), "--interval", "0.2", *DEMO_FLAGS]
        )
        await terminal.start(demo, cwd=tmp_path)
        await terminal.until_shown("transcripts-demo", "RUNNING")

        deadline = time.monotonic() + WAIT_S
        while (scraped := await scrape(port)).value("crawldeck_requests_total") < 2:
            assert time.monotonic() < deadline, scraped.text
            await asyncio.sleep(STEP_S)
        assert set(scraped.families) >= FAMILIES
        assert scraped.value("crawldeck_job_state", crawldeck_job_state="running") == 1.0
        assert scraped.value("crawldeck_concurrency_ceiling") == 2  # the demo flags' preset
        alias = {"provider": "sim", "key_alias": "sim-main"}
        assert scraped.value("crawldeck_key_requests_total", **alias) >= 1

        await terminal.press("q")
        await terminal.until_shown("Stop and quit")
        await terminal.press("y")
        while await terminal.session_alive():
            assert time.monotonic() < deadline + WAIT_S, await terminal.screen()
            await asyncio.sleep(STEP_S)
        await until_no_process_has(marker)
    with pytest.raises(ConnectionRefusedError):  # the endpoint ended with the dashboard
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
