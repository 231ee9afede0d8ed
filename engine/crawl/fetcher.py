"""Fetching pages politely and safely, through `GuardedTransport`.

The address checks live in the transport's network backend (see
`engine.crawl.guarded_transport`), so every connection — a redirect's, a
second lookup's, a keep-alive miss's — is checked on connect.

`Fetcher.fetch(url)` never raises for a site's problem: each failure is a
`FetchOutcome`.  Redirects are followed here, hop by hop, so each hop is
checked against robots.txt and politeness like a fresh request.

The politeness delay is kept between requests' real starts: each request
waits at its host's gate (`HostTurn.on_the_wire`) once it holds a global
slot and a connection, right before its first byte is written — robots.txt,
every redirect hop and the plain-http fallback alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin

import httpx2

from engine.config.settings import CrawlSettings
from engine.crawl.address_policy import AddressPolicy, Resolver, SystemResolver
from engine.crawl.asyncio_network import TLSHandshakeError
from engine.crawl.guarded_transport import (
    BlockedAddressError,
    GuardedNetworkBackend,
    GuardedTransport,
    NameResolutionError,
)
from engine.crawl.host_politeness import HostPoliteness, HostTurn, SharedHostTurns
from engine.crawl.outcomes import FetchOutcome, FetchResult
from engine.crawl.robots import MAX_ROBOTS_BYTES, RobotsCache
from engine.limits.concurrency_limit import ConcurrencyLimit

_REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1"
_ENCODINGS = "gzip, deflate"  # what httpx2 decodes without optional packages
# Failures in these words happened before any byte of HTTP was exchanged:
# the https-first fallback retries plain http only for them.
_CONNECT_PHASE = "connect"
# httpcore2's trace events just before and just after a request's head is written.
_REQUEST_GOES_OUT = "http11.send_request_headers.started"
_REQUEST_WENT_OUT = "http11.send_request_headers.complete"


class _WireGate:
    """The `trace` extension of one request: holds it at the host's gate before it is sent.

    httpcore2 awaits the trace callback at each step of a request; the step
    right before the request head is written is the one moment that is both
    after the connection exists and before the host sees anything.  Once the
    head is written the time is noted again, in case the process was paused
    in between.
    """

    __slots__ = ("_turn",)

    def __init__(self, turn: HostTurn) -> None:
        self._turn = turn

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == _REQUEST_GOES_OUT:
            await self._turn.on_the_wire()
        elif event == _REQUEST_WENT_OUT:
            self._turn.sent()


# --- the fetcher -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchStats:
    """The fetcher's counters at one moment.  `pages` counts fetches that
    delivered a page; `bytes` counts bytes received, robots.txt included."""

    in_flight: int
    concurrency: int
    by_outcome: tuple[tuple[str, int], ...]
    bytes: int
    pages: int


@dataclass(frozen=True, slots=True)
class _Hop:
    """What one HTTP request (one hop of a fetch) came to."""

    outcome: FetchOutcome | None  # None: a page or a redirect
    status: int | None = None
    content_type: str = ""
    body: bytes = b""
    location: str | None = None
    error: str = ""


def _is_connect_failure(result: FetchResult) -> bool:
    """True if the fetch failed before HTTP began: worth retrying over plain http."""
    if result.outcome is FetchOutcome.TLS_ERROR:
        return True
    return result.outcome in (FetchOutcome.REFUSED, FetchOutcome.TIMED_OUT) and (
        result.error.startswith(_CONNECT_PHASE)
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _describe(exc: BaseException) -> str:
    """The first non-empty message down the cause chain (httpx2 often wraps an empty one)."""
    for link in _causes(exc):
        if str(link):
            return str(link)
    return type(exc).__name__


def _failed_hop(exc: Exception) -> _Hop:
    """Name the outcome of a request that raised."""
    chain = list(_causes(exc))
    for kind, outcome in (
        (BlockedAddressError, FetchOutcome.BLOCKED_ADDRESS),
        (NameResolutionError, FetchOutcome.DNS_FAILURE),
        (TLSHandshakeError, FetchOutcome.TLS_ERROR),
    ):
        found = next((e for e in chain if isinstance(e, kind)), None)
        if found is not None:
            return _Hop(outcome, error=_describe(found))
    if isinstance(exc, httpx2.ConnectTimeout):
        return _Hop(FetchOutcome.TIMED_OUT, error=f"{_CONNECT_PHASE} timed out")
    if isinstance(exc, httpx2.TimeoutException):
        phase = "write" if isinstance(exc, httpx2.WriteTimeout) else "read"
        return _Hop(FetchOutcome.TIMED_OUT, error=f"{phase} timed out")
    if isinstance(exc, httpx2.ConnectError):
        return _Hop(FetchOutcome.REFUSED, error=f"{_CONNECT_PHASE} failed: {_describe(exc)}")
    if isinstance(exc, (httpx2.UnsupportedProtocol, httpx2.InvalidURL)):
        return _Hop(FetchOutcome.INVALID_URL, error=_describe(exc))
    if isinstance(exc, httpx2.DecodingError):
        return _Hop(FetchOutcome.HTTP_ERROR, error=f"undecodable body: {_describe(exc)}")
    # Read and write errors, a dropped connection, a garbled answer.
    return _Hop(FetchOutcome.REFUSED, error=f"connection dropped: {_describe(exc)}")


def _http_url(text: str) -> httpx2.URL | str:
    """The URL if it is an http(s) URL with a host, else why not."""
    try:
        url = httpx2.URL(text)
    except (httpx2.InvalidURL, TypeError, ValueError) as exc:
        return f"invalid URL {text!r}: {exc}"
    if url.scheme not in ("http", "https"):
        return f"unsupported scheme in {text!r}"
    if not url.host:
        return f"no host in {text!r}"
    return url


def _host_key(url: httpx2.URL) -> str:
    # The host, whatever the scheme or port: https and its plain-http fallback
    # (or a second port) reach the same machine, and the delay is for its sake.
    return url.host


class Fetcher:
    """Fetches pages within global and per-host limits, robots.txt and the address policy.

    It follows the job's `[crawl]` settings: their limits, timeouts,
    politeness, content types, robots, User-Agent and allowed addresses
    (targets, depth and extraction are the crawl stage's).

    Use it as an async context manager: entering opens the transport,
    leaving closes it and its connections.  `fetch` and `fetch_target` may
    be called from any number of tasks at once.  `shared_hosts` (a
    cluster's) spaces each host's requests across processes too.

    Requests go to `GuardedTransport` directly, not through an
    `httpx2.AsyncClient`: what the client would add (its own redirects, a
    cookie jar, proxies from the environment, auth and hooks) the crawler
    must not have, and skipping it saved about 35 µs of CPU a request
    (~11% of a keep-alive request) when measured.
    """

    def __init__(
        self,
        settings: CrawlSettings | None = None,
        *,
        resolver: Resolver | None = None,
        policy: AddressPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared_hosts: SharedHostTurns | None = None,
    ) -> None:
        self._settings = settings if settings is not None else CrawlSettings()
        self._policy = (
            policy if policy is not None else AddressPolicy(self._settings.allow_addresses)
        )
        self._backend = GuardedNetworkBackend(
            resolver if resolver is not None else SystemResolver(), self._policy
        )
        self._clock = clock
        self._user_agent = self._settings.user_agent_header
        self._limit = ConcurrencyLimit(self._settings.concurrency)
        self._politeness = HostPoliteness(
            self._settings.per_host,
            self._settings.politeness_delay_s,
            clock=clock,
            shared=shared_hosts,
        )
        self._robots = RobotsCache(self._fetch_robots_file, clock=clock)
        self._transport: GuardedTransport | None = None
        # Built once: every request sends the same headers (the Host header is added
        # per request) and the same timeouts.  No Cookie header, ever: thousands of
        # sites' cookies would otherwise pile up in one jar.
        self._headers = httpx2.Headers(
            {"User-Agent": self._user_agent, "Accept": _ACCEPT, "Accept-Encoding": _ENCODINGS}
        )
        self._timeouts = httpx2.Timeout(
            connect=self._settings.connect_timeout_s,
            read=self._settings.read_timeout_s,
            write=self._settings.read_timeout_s,
            pool=self._settings.connect_timeout_s,
        ).as_dict()
        self._by_outcome: dict[str, int] = {outcome.value: 0 for outcome in FetchOutcome}
        self._bytes = 0
        self._pages = 0

    async def __aenter__(self) -> Self:
        self._transport = GuardedTransport(self._backend)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport and its connections.  Safe to call twice."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    @property
    def settings(self) -> CrawlSettings:
        return self._settings

    @property
    def user_agent(self) -> str:
        return self._user_agent

    @property
    def robots(self) -> RobotsCache:
        return self._robots

    @property
    def connect_attempts(self) -> int:
        """TCP connects tried so far; the policy admitted each address before the attempt."""
        return self._backend.connect_attempts

    def set_concurrency(self, limit: int) -> None:
        """Change the global cap on requests in flight; it applies to the next request."""
        self._limit.set_limit(limit)

    def stats(self) -> FetchStats:
        """The counters now, as an immutable value."""
        return FetchStats(
            in_flight=self._limit.in_use,
            concurrency=self._limit.limit,
            by_outcome=tuple(self._by_outcome.items()),
            bytes=self._bytes,
            pages=self._pages,
        )

    async def fetch(self, url: str) -> FetchResult:
        """Fetch `url` (following redirects); every site problem is an outcome, never raised."""
        return self._counted(await self._fetch(url, robots_file=False))

    async def fetch_target(self, host: str) -> FetchResult:
        """Fetch a crawl target's home page: `https://host/`, then `http://host/` if
        https could not connect (refused, TLS failure, connect timeout) — not if
        it answered with an HTTP error."""
        started = self._clock()
        name = host.strip().lower().rstrip(".")
        if not name or any(c in name for c in "/?#@\\ \t"):
            return self._counted(
                FetchResult(
                    url=host,
                    final_url=host,
                    outcome=FetchOutcome.INVALID_URL,
                    status=None,
                    content_type="",
                    body=b"",
                    redirects=0,
                    elapsed_s=self._clock() - started,
                    error=f"not a host name: {host!r}",
                )
            )
        result = await self._fetch(f"https://{name}/", robots_file=False)
        if _is_connect_failure(result):
            result = await self._fetch(f"http://{name}/", robots_file=False)
        return self._counted(result)

    def _counted(self, result: FetchResult) -> FetchResult:
        self._by_outcome[result.outcome.value] += 1
        if result.outcome.has_page:
            self._pages += 1
        return result

    async def _fetch_robots_file(self, url: str) -> FetchResult:
        return await self._fetch(url, robots_file=True)

    async def _fetch(self, url: str, *, robots_file: bool) -> FetchResult:
        started = self._clock()
        current = url
        redirects = 0

        def finish(hop: _Hop, outcome: FetchOutcome | None = None) -> FetchResult:
            final = outcome or hop.outcome
            assert final is not None
            return FetchResult(
                url=url,
                final_url=current,
                outcome=final,
                status=hop.status,
                content_type=hop.content_type,
                body=hop.body if final.has_page else b"",
                redirects=redirects,
                elapsed_s=self._clock() - started,
                error=hop.error,
            )

        while True:
            target = _http_url(current)
            if isinstance(target, str):
                return finish(_Hop(FetchOutcome.INVALID_URL, error=target))
            delay: float | None = None
            if self._settings.respect_robots and not robots_file:
                rules = await self._robots.rules_for(current)
                if not rules.allows(current, self._user_agent):
                    failure = rules.failure
                    if failure is not None and failure.redirects == 0:
                        # robots.txt on this very origin got no answer: that is the real cause.
                        return finish(
                            _Hop(failure.outcome, error=f"{failure.error} (fetching robots.txt)")
                        )
                    return finish(
                        _Hop(FetchOutcome.ROBOTS_BLOCKED, error="disallowed by robots.txt")
                    )
                delay = rules.crawl_delay(self._user_agent)
            async with self._politeness.slot(_host_key(target), delay) as turn:
                await self._limit.acquire()
                try:
                    hop = await self._request(target, turn, robots_file=robots_file)
                finally:
                    self._limit.release()
            if hop.location is None:
                if hop.outcome is not None:
                    return finish(hop)
                ok = FetchOutcome.REDIRECTED if redirects else FetchOutcome.FETCHED
                return finish(hop, ok)
            if redirects >= self._settings.max_redirects:
                return finish(
                    _Hop(
                        FetchOutcome.TOO_MANY_REDIRECTS,
                        status=hop.status,
                        error=f"more than {self._settings.max_redirects} redirects",
                    )
                )
            redirects += 1
            current = urljoin(str(target), hop.location)

    async def _request(self, target: httpx2.URL, turn: HostTurn, *, robots_file: bool) -> _Hop:
        transport = self._transport
        if transport is None:
            raise RuntimeError("the fetcher is closed: use it as `async with Fetcher(...)`")
        limit = MAX_ROBOTS_BYTES if robots_file else self._settings.max_body_bytes
        total_s = self._settings.total_timeout_s
        try:
            request = httpx2.Request(
                "GET",
                target,
                headers=self._headers,
                extensions={"timeout": self._timeouts, "trace": _WireGate(turn)},
            )
            # One deadline for connect, headers and body: the per-read timeout alone
            # would let a server that drips a byte every few seconds hold a slot forever.
            async with asyncio.timeout(total_s):
                response = await transport.handle_async_request(request)
                try:
                    return await self._read(response, limit, robots_file=robots_file)
                finally:
                    self._bytes += response.num_bytes_downloaded
                    await response.aclose()
        except TimeoutError:
            return _Hop(FetchOutcome.TIMED_OUT, error=f"no complete answer within {total_s:g}s")
        except (httpx2.HTTPError, httpx2.InvalidURL, OSError) as exc:
            return _failed_hop(exc)

    async def _read(self, response: httpx2.Response, limit: int, *, robots_file: bool) -> _Hop:
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        location = response.headers.get("location")
        if status in _REDIRECT_STATUSES and location:
            return _Hop(None, status=status, content_type=content_type, location=location)
        if not 200 <= status < 300:
            return _Hop(
                FetchOutcome.HTTP_ERROR,
                status=status,
                content_type=content_type,
                error=f"HTTP {status}",
            )
        if not robots_file and not self._acceptable(content_type):
            return _Hop(
                FetchOutcome.NOT_HTML,
                status=status,
                content_type=content_type,
                error=f"content type {content_type!r} is not a page",
            )
        declared = response.headers.get("content-length", "")
        if not robots_file and declared.isdigit() and int(declared) > limit:
            return _Hop(
                FetchOutcome.TOO_LARGE,
                status=status,
                content_type=content_type,
                error=f"declares {declared} bytes, over the {limit}-byte cap",
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                if robots_file:  # RFC 9309: read the first 500 KiB, ignore the rest
                    del body[limit:]
                    break
                return _Hop(
                    FetchOutcome.TOO_LARGE,
                    status=status,
                    content_type=content_type,
                    error=f"body over the {limit}-byte cap",
                )
        return _Hop(None, status=status, content_type=content_type, body=bytes(body))

    def _acceptable(self, content_type: str) -> bool:
        media = content_type.split(";", 1)[0].strip().lower()
        # No Content-Type at all: let the extractor judge the bytes.
        return not media or media in self._settings.content_types
