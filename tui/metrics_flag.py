"""`--metrics [HOST:]PORT` on `run` and `demo`: Prometheus metrics of the job.

The flag is checked when the command line is read; the endpoint binds
before the simulator (or anything else the job needs) starts, so a taken
port ends the command in one line with nothing run.  prometheus-client
loads only when the flag is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from engine.api import MetricsAddress, Snapshot, parse_metrics_address

if TYPE_CHECKING:
    from engine.api import MetricsEndpoint

METRICS_FLAG = "--metrics"
# The engine's figures move once a second (its tick): a scrape sees a snapshot
# at most this old, however long `--interval` is.  A snapshot costs ~0.2 ms.
STALEST_S = 1.0
QUICKEST_S = 0.05  # `--interval 0` must not make publishing a busy loop


def add_metrics_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        METRICS_FLAG,
        type=_metrics_address,
        default=None,
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics while the job runs "
        "(a bare PORT listens on 127.0.0.1 only; 0.0.0.0:PORT on every interface)",
    )


def _metrics_address(text: str) -> MetricsAddress:
    try:
        return parse_metrics_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@contextlib.asynccontextmanager
async def metrics_endpoint(address: MetricsAddress | None) -> AsyncIterator[MetricsEndpoint | None]:
    """The endpoint listening for the block (None without the flag); says where on stderr."""
    if address is None:
        yield None
        return
    from engine.api import serving_metrics

    async with serving_metrics(address) as endpoint:
        print(f"crawldeck: metrics at {endpoint.url}", file=sys.stderr)
        yield endpoint


@contextlib.asynccontextmanager
async def metrics_published(
    endpoint: MetricsEndpoint | None, take_snapshot: Callable[[], Snapshot], interval_s: float
) -> AsyncIterator[None]:
    """The job's snapshot published to `endpoint` every `interval_s` (at most
    `STALEST_S`) while the block runs.

    The publishing task is this block's: cancelled and awaited at its end,
    when it publishes the job's last snapshot.
    """
    if endpoint is None:
        yield
        return
    publishing = asyncio.create_task(
        endpoint.publish_every(take_snapshot, min(max(interval_s, QUICKEST_S), STALEST_S)),
        name="metrics-publisher",
    )
    try:
        yield
    finally:
        publishing.cancel()
        await asyncio.wait((publishing,))
        if not publishing.cancelled():
            publishing.result()  # it failed: say so, not silently
