"""Host names pinned to addresses by pattern, like curl's `--resolve`; the rest via DNS.

A job file's `[crawl] resolve = { "*.test" = "127.0.0.1" }` is how a local
test site answers for thousands of synthetic domains.  The address policy
still judges every pinned address: pinning a name to 10.0.0.1 does not
admit it unless `allow_addresses` does too.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from engine.crawl.address_policy import Resolver, SystemResolver


class PinnedResolver:
    """Resolves names matching a pattern to its address; other names through `fallback`."""

    def __init__(self, pins: Mapping[str, str], fallback: Resolver | None = None) -> None:
        # Exact names first, then patterns in the order given.
        self._exact = {k.lower().rstrip("."): v for k, v in pins.items() if "*" not in k}
        self._patterns = [(k.lower().rstrip("."), v) for k, v in pins.items() if "*" in k]
        self._fallback = fallback if fallback is not None else SystemResolver()

    async def resolve(self, host: str, port: int) -> list[str]:
        name = host.lower().rstrip(".")
        if name in self._exact:
            return [self._exact[name]]
        for pattern, address in self._patterns:
            if fnmatchcase(name, pattern):
                return [address]
        return await self._fallback.resolve(host, port)
