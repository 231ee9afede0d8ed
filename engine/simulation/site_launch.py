"""Run the synthetic site server in a process of its own, for demos and benchmarks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from engine.simulation.service_process import ServiceStartError, service_process


@dataclass(frozen=True, slots=True)
class LaunchedSites:
    port: int
    domains_file: Path  # one `site-NNNN.test:PORT` a line
    count: int


@contextlib.asynccontextmanager
async def launched_site_server(
    count: int, domains_file: Path, *, slow_s: float = 2.0
) -> AsyncIterator[LaunchedSites]:
    """Serve `count` synthetic sites on a loopback port and list them in `domains_file`."""
    args = [
        "engine.simulation.site_server",
        "--port",
        "0",
        "--count",
        str(count),
        "--domains-file",
        str(domains_file),
        "--slow-s",
        str(slow_s),
        "--exit-with-parent",
    ]
    async with service_process("site server", args) as line:
        try:
            port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError):
            raise ServiceStartError(f"the site server did not start: {line}") from None
        yield LaunchedSites(port, domains_file, count)
