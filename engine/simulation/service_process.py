"""A helper service (the simulator, the site server) in a process of its own.

Its own process keeps the service's CPU out of the engine's event loop.
It runs in a new session, so a terminal's Ctrl-C, which drains the job,
does not stop the service the drain still needs; its stdin is a pipe from
us, so it can exit when we die, even by kill -9 (`--exit-with-parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence

START_TIMEOUT_S = 30.0


class ServiceStartError(RuntimeError):
    """The service did not announce itself; the message carries its last words."""


@contextlib.asynccontextmanager
async def service_process(
    name: str, module_args: Sequence[str], env: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """Run `python -m <module_args>`; yield the first line it prints once started.

    The service is terminated (then killed) when the block ends.  `name` is
    what a start-up failure calls it.
    """
    errors = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in the finally below
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *module_args,
        stdin=asyncio.subprocess.PIPE,  # closes when we die: the service follows
        stdout=asyncio.subprocess.PIPE,
        stderr=errors,  # a file, not a pipe: a full pipe would block the service
        env=None if env is None else dict(env),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = (await proc.stdout.readline()).decode().strip()
        except TimeoutError:
            line = ""
        if not line:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await proc.wait()
            errors.seek(0)
            detail = errors.read().decode(errors="replace").strip()[-300:]
            raise ServiceStartError(f"the {name} did not start: {detail}")
        yield line
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
