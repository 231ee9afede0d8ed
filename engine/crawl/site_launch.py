"""Run the synthetic site server in a process of its own, for demos and benchmarks.

Its own process, so serving thousands of pages never takes CPU from the
engine's event loop; it exits with its parent, even after a kill -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


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
        sys.executable,
        "-m",
        "engine.crawl.site_server",
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
    errors = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in the finally below
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,  # closes when we die: the server follows
        stdout=asyncio.subprocess.PIPE,
        stderr=errors,  # a file, not a pipe: a full pipe would block the server
        start_new_session=True,  # a terminal's Ctrl-C must not stop it mid-drain
    )
    try:
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                line = (await proc.stdout.readline()).decode().strip()
            port = int(json.loads(line)["port"])
        except (TimeoutError, ValueError, KeyError, TypeError):
            errors.seek(0)
            detail = errors.read().decode(errors="replace").strip()[-300:]
            raise RuntimeError(f"the site server did not start: {detail}") from None
        yield LaunchedSites(port, domains_file, count)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        errors.close()
