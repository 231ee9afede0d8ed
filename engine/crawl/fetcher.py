"""Fetching pages politely and safely, on one shared HTTP connection pool.

The safety check lives in the network backend of that pool: every
connection resolves its host name through the `Resolver`, refuses the host
if any address fails the `AddressPolicy`, and connects to the address it
checked.  The URL keeps the host name, so the Host header, TLS SNI and
certificate checks still use the name.  A redirect, a second lookup of the
same name or a keep-alive miss all go through that one place, so DNS
rebinding and redirects to private addresses are refused on connect.

`Fetcher.fetch(url)` never raises for a site's problem: each failure is a
`FetchOutcome`.  Redirects are followed here, hop by hop, so each hop is
checked against robots.txt and politeness like a fresh request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import select
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin

import httpcore2
import httpx2

from engine.concurrency_limit import ConcurrencyLimit
from engine.crawl.address_policy import AddressPolicy, Resolver, SystemResolver
from engine.crawl.fetch_settings import FetchSettings
from engine.crawl.host_politeness import HostPoliteness
from engine.crawl.outcomes import FetchOutcome, FetchResult
from engine.crawl.robots import MAX_ROBOTS_BYTES, RobotsCache

_REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1"
# Failures in these words happened before any byte of HTTP was exchanged:
# the https-first fallback retries plain http only for them.
_CONNECT_PHASE = "connect"


# --- the guarded network backend -------------------------------------------------------------


class BlockedAddressError(httpcore2.ConnectError):
    """The address policy refused the address a host name resolved to."""


class NameResolutionError(httpcore2.ConnectError):
    """The host name did not resolve (or took longer than the connect timeout)."""


class TLSHandshakeError(httpcore2.ConnectError):
    """The TLS handshake failed: bad certificate, wrong protocol, or a dropped handshake."""


class _GuardedStream(httpcore2.AsyncNetworkStream):
    """A connected stream that names TLS failures and answers "is it readable?" cheaply.

    Without the first, a handshake the server drops looks exactly like a
    refused connection and the https-first fallback could not tell them
    apart.  The second matters because the pool asks every idle connection
    that question on every request, and the stock answer rebuilds a dict of
    socket attributes each time: with a hundred idle connections it was
    most of the fetcher's CPU.
    """

    def __init__(self, inner: httpcore2.AsyncNetworkStream, sock: Any = None) -> None:
        self._inner = inner
        self._socket = sock if sock is not None else inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        except httpcore2.ConnectError as exc:
            cause = exc.__cause__ or exc
            message = f"TLS handshake with {server_hostname} failed: {cause}"
            raise TLSHandshakeError(message) from exc
        return _GuardedStream(tls, self._socket)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


def _readable(sock: Any) -> bool:
    """True if a read would not block: data, or the peer's close, is waiting."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True  # gone: the next read returns b"", which is what "readable" predicts
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class GuardedNetworkBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to addresses the policy admits, resolving names itself.

    If any address of a name is refused the whole name is refused: an
    attacker's DNS could otherwise list a public address first and a private
    one second and wait for the first to fail.
    """

    def __init__(
        self,
        resolver: Resolver,
        policy: AddressPolicy,
        inner: httpcore2.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolver = resolver
        self._policy = policy
        self._inner = inner if inner is not None else httpcore2.AnyIOBackend()
        self.connect_attempts = 0  # TCP connects tried, each to an admitted address

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        addresses = await self._addresses(host, port, timeout)
        for ip in addresses:
            reason = self._policy.check(ip, host)
            if reason is not None:
                raise BlockedAddressError(f"{host} resolves to {ip}: {reason}")
        last_error: Exception | None = None
        for ip in addresses:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            self.connect_attempts += 1
            try:
                stream = await self._inner.connect_tcp(
                    ip,
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore2.ConnectError as exc:
                last_error = exc  # the next address may answer
                continue
            await self._check_peer(stream, host)
            return _GuardedStream(stream)
        assert last_error is not None  # _addresses never returns an empty list
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are never crawled")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _addresses(self, host: str, port: int, timeout: float | None) -> list[str]:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]  # a literal address needs no lookup (the policy still applies)
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolver.resolve(host, port)
        except TimeoutError:
            raise NameResolutionError(f"resolving {host} took longer than {timeout}s") from None
        except (OSError, UnicodeError) as exc:
            raise NameResolutionError(f"{host} does not resolve: {exc}") from exc
        if not addresses:
            raise NameResolutionError(f"{host} resolves to no address")
        return addresses

    async def _check_peer(self, stream: httpcore2.AsyncNetworkStream, host: str) -> None:
        """Re-check the address the socket really reached: cheap, and it closes any gap."""
        peer = stream.get_extra_info("server_addr")
        if not peer:
            return
        reason = self._policy.check(str(peer[0]), host)
        if reason is not None:
            await stream.aclose()
            raise BlockedAddressError(f"{host} connected to {peer[0]}: {reason}")


# --- the httpx2 transport over that backend --------------------------------------------------

# Most specific first: a ConnectTimeout is also a TimeoutException.
_CORE_TO_CLIENT_ERRORS: tuple[tuple[type[Exception], type[httpx2.HTTPError]], ...] = (
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
)


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    """Raise httpx2's exception for an httpcore2 one, keeping the original as the cause."""
    try:
        yield
    except Exception as exc:
        for core_type, client_type in _CORE_TO_CLIENT_ERRORS:
            if isinstance(exc, core_type):
                raise client_type(str(exc)) from exc
        raise


class _ResponseBody(httpx2.AsyncByteStream):
    def __init__(self, core_stream: Any) -> None:
        self._core_stream = core_stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _client_errors():
            async for part in self._core_stream:
                yield part

    async def aclose(self) -> None:
        await self._core_stream.aclose()


class GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport whose connection pool connects through `GuardedNetworkBackend`.

    The pool itself has no connection cap: the fetcher's own limits decide
    how many requests run, and a second cap here would only add a queue.
    """

    def __init__(
        self,
        backend: GuardedNetworkBackend,
        *,
        max_keepalive: int = 32,
        keepalive_expiry_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.backend = backend
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context if ssl_context is not None else httpx2.create_ssl_context(),
            max_connections=None,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=keepalive_expiry_s,
            http1=True,
            http2=False,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]  # an AsyncByteStream is async-iterable
            extensions=request.extensions,
        )
        with _client_errors():
            core_response = await self._pool.handle_async_request(core_request)
        return httpx2.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseBody(core_response.stream),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


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
    return url.host if url.port is None else f"{url.host}:{url.port}"


class Fetcher:
    """Fetches pages within global and per-host limits, robots.txt and the address policy.

    Use it as an async context manager: entering opens the one shared HTTP
    client, leaving closes it.  `fetch` and `fetch_target` may be called
    from any number of tasks at once.
    """

    def __init__(
        self,
        settings: FetchSettings | None = None,
        *,
        resolver: Resolver | None = None,
        policy: AddressPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings if settings is not None else FetchSettings()
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
            self._settings.per_host, self._settings.politeness_delay_s, clock=clock
        )
        self._robots = RobotsCache(self._fetch_robots_file, clock=clock)
        self._client: httpx2.AsyncClient | None = None
        self._by_outcome: dict[str, int] = {outcome.value: 0 for outcome in FetchOutcome}
        self._bytes = 0
        self._pages = 0

    async def __aenter__(self) -> Self:
        settings = self._settings
        self._client = httpx2.AsyncClient(
            transport=GuardedTransport(self._backend),
            timeout=httpx2.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.read_timeout_s,
                pool=settings.connect_timeout_s,
            ),
            follow_redirects=False,  # followed here, so each hop gets robots and politeness
            trust_env=False,  # a proxy from the environment would bypass the address checks
            headers={"User-Agent": self._user_agent, "Accept": _ACCEPT},
            # Thousands of sites' cookies would pile up in one shared jar: keep none.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the shared client and its connections.  Safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def settings(self) -> FetchSettings:
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
            async with self._politeness.slot(_host_key(target), delay):
                await self._limit.acquire()
                try:
                    hop = await self._request(target, robots_file=robots_file)
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

    async def _request(self, target: httpx2.URL, *, robots_file: bool) -> _Hop:
        client = self._client
        if client is None:
            raise RuntimeError("the fetcher is closed: use it as `async with Fetcher(...)`")
        limit = MAX_ROBOTS_BYTES if robots_file else self._settings.max_body_bytes
        total_s = self._settings.total_timeout_s
        try:
            request = client.build_request("GET", target)
            # One deadline for connect, headers and body: the per-read timeout alone
            # would let a server that drips a byte every few seconds hold a slot forever.
            async with asyncio.timeout(total_s):
                response = await client.send(request, stream=True)
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
