"""robots.txt per origin, fetched once and shared, read the way RFC 9309 says.

- 2xx: the rules apply (only the first 500 KiB are read).
- 4xx (and redirects past the limit): no rules, everything is allowed.
- 5xx, 429, or no answer at all: the site is unreachable, everything is disallowed.

Parsing is the standard library's `urllib.robotparser` (first matching rule
wins, integer Crawl-delay).  The cache is an LRU bounded in hosts;
rules expire after `ttl_s` so a long crawl re-reads changed rules, and an
unreachable robots.txt after the much shorter `unreachable_ttl_s`, so one
passing outage does not close a site for the rest of the crawl.
"""

from __future__ import annotations

import asyncio
import time
import urllib.robotparser
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.crawl.outcomes import FetchOutcome, FetchResult

MAX_ROBOTS_BYTES = 500 * 1024  # RFC 9309 §2.5: parse at least the first 500 KiB

_DISALLOW_ALL = ("User-agent: *", "Disallow: /")

RobotsFetch = Callable[[str], Awaitable[FetchResult]]

# Outcomes that mean the robots.txt answer itself arrived (whatever its status).
_ANSWERED = frozenset(
    (
        FetchOutcome.FETCHED,
        FetchOutcome.REDIRECTED,
        FetchOutcome.HTTP_ERROR,
        FetchOutcome.TOO_LARGE,
        FetchOutcome.NOT_HTML,
        FetchOutcome.EMPTY_TEXT,
    )
)


@dataclass(frozen=True, slots=True)
class RobotsRules:
    """One origin's rules.  `failure` is the robots.txt fetch that never got an
    answer (DNS, refused, timeout, blocked address...), kept so a page fetch
    can report that cause rather than a bare "blocked by robots"."""

    parser: urllib.robotparser.RobotFileParser
    failure: FetchResult | None
    fetched_at: float
    unreachable: bool = False  # 5xx, 429 or no answer: everything is disallowed for now

    def allows(self, url: str, user_agent: str) -> bool:
        return self.parser.can_fetch(user_agent, url)

    def crawl_delay(self, user_agent: str) -> float | None:
        delay = self.parser.crawl_delay(user_agent)
        return None if delay is None else float(delay)


def robots_url(url: str) -> str:
    """`scheme://host[:port]/robots.txt` for any URL on that origin."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}/robots.txt"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def rules_from_result(result: FetchResult, fetched_at: float) -> RobotsRules:
    """Turn a robots.txt fetch into rules, per RFC 9309 §2.3.1."""
    parser = urllib.robotparser.RobotFileParser()
    failure: FetchResult | None = None
    unreachable = False
    status = result.status
    if result.outcome not in _ANSWERED or status is None:
        if result.outcome is FetchOutcome.TOO_MANY_REDIRECTS:
            parser.parse([])  # §2.3.1.2: too many redirects counts as unavailable
        else:
            parser.parse(_DISALLOW_ALL)
            failure, unreachable = result, True
    elif 200 <= status < 300:
        text = result.body[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")
        parser.parse(text.splitlines())
    elif status == 429 or status >= 500:
        parser.parse(_DISALLOW_ALL)  # unreachable: assume the site wants no visitors yet
        unreachable = True
    else:
        parser.parse([])  # unavailable (4xx): no rules, everything allowed
    return RobotsRules(
        parser=parser, failure=failure, fetched_at=fetched_at, unreachable=unreachable
    )


class RobotsCache:
    """Robots rules per scheme and host, fetched at most once at a time.

    `fetch` gets a robots.txt URL and returns its `FetchResult` (the fetcher
    passes one that skips robots checks and truncates at `MAX_ROBOTS_BYTES`).
    Callers that arrive while a fetch is under way wait for that fetch.
    """

    def __init__(
        self,
        fetch: RobotsFetch,
        *,
        max_hosts: int = 10_000,
        ttl_s: float = 24 * 3600.0,
        unreachable_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_hosts < 1:
            raise ValueError(f"max_hosts must be at least 1, got {max_hosts}")
        self._fetch = fetch
        self._max_hosts = max_hosts
        self._ttl_s = ttl_s
        self._unreachable_ttl_s = unreachable_ttl_s
        self._clock = clock
        self._rules: OrderedDict[str, RobotsRules] = OrderedDict()
        self._pending: dict[str, asyncio.Future[RobotsRules]] = {}
        self.fetches = 0  # robots.txt fetches started, for stats and tests

    def __len__(self) -> int:
        return len(self._rules)

    async def allowed(self, url: str, user_agent: str) -> bool:
        """True if `user_agent` may fetch `url` (fetching the origin's robots.txt if needed)."""
        return (await self.rules_for(url)).allows(url, user_agent)

    def crawl_delay(self, host: str, user_agent: str = "*") -> float | None:
        """The cached Crawl-delay for `host` (either scheme; the larger wins), or None."""
        delays: list[float] = []
        for scheme in ("https", "http"):
            rules = self._rules.get(f"{scheme}://{host.lower()}")
            if rules is not None:
                delay = rules.crawl_delay(user_agent)
                if delay is not None:
                    delays.append(delay)
        return max(delays) if delays else None

    async def rules_for(self, url: str) -> RobotsRules:
        """The rules for `url`'s origin, from the cache or one shared fetch."""
        origin = _origin(url)
        while True:
            cached = self._rules.get(origin)
            if cached is not None and self._fresh(cached):
                self._rules.move_to_end(origin)
                return cached
            pending = self._pending.get(origin)
            if pending is None:
                return await self._lead_fetch(origin)
            try:
                # shield: one waiter giving up must not cancel the fetch the others wait for.
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled ourselves
                # The leading caller was cancelled mid-fetch: take over and try again.

    def _fresh(self, rules: RobotsRules) -> bool:
        ttl = self._unreachable_ttl_s if rules.unreachable else self._ttl_s
        return self._clock() - rules.fetched_at < ttl

    async def _lead_fetch(self, origin: str) -> RobotsRules:
        future: asyncio.Future[RobotsRules] = asyncio.get_running_loop().create_future()
        self._pending[origin] = future
        try:
            self.fetches += 1
            result = await self._fetch(f"{origin}/robots.txt")
            rules = rules_from_result(result, self._clock())
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: waiters may be none, and that's fine
            raise
        finally:
            del self._pending[origin]
        self._store(origin, rules)
        future.set_result(rules)
        return rules

    def _store(self, origin: str, rules: RobotsRules) -> None:
        self._rules[origin] = rules
        self._rules.move_to_end(origin)
        while len(self._rules) > self._max_hosts:
            self._rules.popitem(last=False)
