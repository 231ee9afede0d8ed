"""One politeness clock per host for a cluster's crawl, on Redis's own clock.

Each worker crawls the sites it read from the targets stream, one site by one
worker; but two targets can name the same host (`example.com` and
`example.com/blog`), and two workers would then each keep the delay between
their own requests only.  So before a request goes out, the worker's host
gate (`engine.crawl.host_politeness`) takes the host's next start here: one
script reads Redis's `TIME`, starts the request at the later of now and the
last start taken plus the delay, and records that start — atomic, so any
number of workers on any number of machines space one host's requests by
the delay, and no clock but Redis's is compared.  The key expires shortly
after its spacing ends, so Redis keeps only the hosts being crawled.

A Redis that restarts holds the request at the gate while the command is
retried (`engine.cluster.redis_connection`), as every other command is.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

__all__ = ["SharedHostClock"]

# KEYS: the host's last start.  ARGV: the delay in microseconds, how long the key outlives
# the start in ms.  Returns the microseconds until this request's start.
_TURN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(now, last + tonumber(ARGV[1]))
local keep = math.ceil((start - now) / 1000) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%d', start), 'PX', keep)
return start - now
"""

# The key outlives its spacing by this much: a start taken late still sees it.
_KEEP_AFTER_S = 5.0


class SharedHostClock:
    """Hosts' turns for every worker of the job under `prefix` (see the module docstring)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._prefix = prefix
        self._turn = redis.register_script(_TURN)

    async def turn(self, host: str, delay_s: float) -> float:
        """Take `host`'s next start, `delay_s` after the last one any worker took; the
        seconds until it."""
        micros = math.ceil(delay_s * 1_000_000)
        lifetime_ms = math.ceil((delay_s + _KEEP_AFTER_S) * 1000)
        wait = await self._turn(keys=[f"{self._prefix}:host:{host}"], args=[micros, lifetime_ms])
        return max(0, int(wait)) / 1_000_000
