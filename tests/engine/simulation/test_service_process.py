"""Helper services run in processes of their own, and say why when they cannot start."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from engine.simulation.service_process import ServiceStartError, service_process
from engine.simulation.site_launch import launched_site_server


async def test_a_service_that_cannot_start_says_why_in_one_error() -> None:
    with pytest.raises(ServiceStartError, match=r"the widget did not start: .*no_such_module"):
        async with service_process("widget", ["engine.no_such_module"]):
            pass


async def test_the_first_line_is_yielded_and_the_service_ends_with_the_block(
    tmp_path: Path,
) -> None:
    domains = tmp_path / "domains.txt"
    async with launched_site_server(3, domains) as sites:
        assert sites.count == 3
        listed = domains.read_text(encoding="utf-8").split()
        assert listed == [f"site-000{n}.test:{sites.port}" for n in (1, 2, 3)]
        servers = [
            p for p in psutil.Process().children() if "engine.simulation.site_server" in p.cmdline()
        ]
        assert len(servers) == 1
    assert not servers[0].is_running() or servers[0].status() == psutil.STATUS_ZOMBIE
