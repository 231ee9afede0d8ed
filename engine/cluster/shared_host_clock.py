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

A busy worker's turns at different hosts, asked while a call is out, go
together in the next (`CallCoalescer`): one script call for many pages.

A Redis that restarts holds the request at the gate while the command is
retried (`engine.cluster.redis_connection`), as every other command is.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from engine.cluster.call_coalescer import CallCoalescer

__all__ = ["SharedHostClock"]

# KEYS: each host's last start.  ARGV: for each, the delay in microseconds and how long
# the key outlives the start in ms.  Returns the microseconds until each request's start.
_TURN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local waits = {}
for i = 1, #KEYS do
  local last = tonumber(redis.call('GET', KEYS[i]) or '0')
  local start = math.max(now, last + tonumber(ARGV[2 * i - 1]))
  local keep = math.ceil((start - now) / 1000) + tonumber(ARGV[2 * i])
  redis.call('SET', KEYS[i], string.format('%d', start), 'PX', keep)
  waits[i] = start - now
end
return waits
"""

# The key outlives its spacing by this much: a start taken late still sees it.
_KEEP_AFTER_S = 5.0


class SharedHostClock:
    """Hosts' turns for every worker of the job under `prefix` (see the module docstring)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._prefix = prefix
        self._turn = redis.register_script(_TURN)
        self._turns: CallCoalescer[tuple[str, int, int], float] = CallCoalescer(self._take)

    async def turn(self, host: str, delay_s: float) -> float:
        """Take `host`'s next start, `delay_s` after the last one any worker took; the
        seconds until it."""
        micros = math.ceil(delay_s * 1_000_000)
        lifetime_ms = math.ceil((delay_s + _KEEP_AFTER_S) * 1000)
        return await self._turns.ask((f"{self._prefix}:host:{host}", micros, lifetime_ms))

    async def _take(self, turns: list[tuple[str, int, int]]) -> list[float]:
        args: list[int] = []
        for _key, micros, lifetime_ms in turns:
            args += [micros, lifetime_ms]
        waits = await self._turn(keys=[key for key, _, _ in turns], args=args)
        return [max(0, int(wait)) / 1_000_000 for wait in waits]
