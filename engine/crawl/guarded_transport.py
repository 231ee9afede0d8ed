"""The crawler's HTTP transport: address checks at connect time, a small pool per site.

The safety check lives in the network backend: every connection resolves
its host name through the `Resolver`, refuses the host if any address fails
the `AddressPolicy`, connects to the address it checked and checks the
address the socket really reached.  The URL keeps the host name, so the
Host header, TLS SNI and certificate checks still use the name.  A
redirect, a second lookup of the same name or a keep-alive miss all go
through that one place, so DNS rebinding and redirects to private
addresses are refused on connect.

Connections are pooled per site (scheme, host, port), a few per site and
only for the sites used most recently.  A crawl talks to thousands of sites
a couple of times each: one shared pool would scan every site's idle
connections on every request, while a site's own pool holds one or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore2
import httpx2
from httpcore2 import AsyncHTTP11Connection

from engine.crawl.address_policy import AddressPolicy, Resolver
from engine.crawl.asyncio_network import AsyncioNetworkBackend


class BlockedAddressError(httpcore2.ConnectError):
    """The address policy refused the address a host name resolved to."""


class NameResolutionError(httpcore2.ConnectError):
    """The host name did not resolve (or took longer than the connect timeout)."""


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
        self._inner = inner if inner is not None else AsyncioNetworkBackend()
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
            return stream
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


# --- httpcore2's errors as httpx2's -------------------------------------------------------

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


# --- a pool per site ----------------------------------------------------------------------

_SiteKey = tuple[bytes, bytes, int]  # scheme, host, port
# A connection and the socket under it: the socket says whether the peer hung up.
_Kept = tuple[AsyncHTTP11Connection, httpcore2.AsyncNetworkStream]


@dataclass(slots=True, eq=False)
class _Site:
    """One site's idle keep-alive connections, and how many requests it has in flight."""

    idle: list[_Kept] = field(default_factory=list)
    in_flight: int = 0
    idle_since: float = 0.0


class _ResponseBody(httpx2.AsyncByteStream):
    """A response's body; closing it hands its connection back to the site's pool."""

    def __init__(
        self,
        core_stream: Any,
        transport: GuardedTransport,
        key: _SiteKey,
        site: _Site,
        kept: _Kept,
    ) -> None:
        self._core_stream = core_stream
        self._transport = transport
        self._key = key
        self._site = site
        self._kept: _Kept | None = kept

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _client_errors():
            async for part in self._core_stream:
                yield part

    async def aclose(self) -> None:
        kept, self._kept = self._kept, None
        if kept is None:
            return  # closed already
        try:
            # Whether the connection can be kept is decided here: only once the
            # whole answer was read does httpcore2 mark it idle.
            await self._core_stream.aclose()
        finally:
            await self._transport._check_in(self._key, self._site, kept)


class GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that connects through `GuardedNetworkBackend`, a pool per site.

    Each site (scheme, host, port) keeps up to `per_site_keepalive` idle
    HTTP/1.1 connections, and at most `max_sites` sites keep any: the least
    recently used idle site is closed to make room, and a site idle for
    longer than `keepalive_expiry_s` is closed on the next request.  There is
    no cap on connections: the fetcher's own limits (global and per host)
    decide how many requests run, and a second cap here would only add a queue.
    """

    def __init__(
        self,
        backend: GuardedNetworkBackend,
        *,
        max_sites: int = 256,
        per_site_keepalive: int = 2,
        keepalive_expiry_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sites < 1 or per_site_keepalive < 1:
            raise ValueError("max_sites and per_site_keepalive must be at least 1")
        self.backend = backend
        self._max_sites = max_sites
        self._per_site_keepalive = per_site_keepalive
        self._keepalive_expiry_s = keepalive_expiry_s
        self._ssl_context = ssl_context if ssl_context is not None else httpx2.create_ssl_context()
        self._ssl_context.set_alpn_protocols(["http/1.1"])  # HTTP/2 is never offered
        self._clock = clock
        self._sites: OrderedDict[_SiteKey, _Site] = OrderedDict()  # least recently used first

    @property
    def sites(self) -> int:
        """Sites with a request in flight or an idle connection kept."""
        return len(self._sites)

    @property
    def idle_connections(self) -> int:
        """Keep-alive connections waiting for their site's next request."""
        return sum(len(site.idle) for site in self._sites.values())

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"only http and https are fetched, not {url.scheme!r}")
        core_url = httpcore2.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
        )
        core_request = httpcore2.Request(
            method=request.method,
            url=core_url,
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]  # an AsyncByteStream is async-iterable
            extensions=request.extensions,
        )
        origin = core_url.origin
        key = (origin.scheme, origin.host, origin.port)
        site = await self._check_out(key)
        kept: _Kept | None = None
        try:
            with _client_errors():
                kept = await self._connection(site, origin, core_request)
                core_response = await kept[0].handle_async_request(core_request)
        except BaseException:
            if kept is not None and not kept[0].is_closed():
                await kept[0].aclose()  # it failed mid-request: it cannot be reused
            self._release(key, site)
            raise
        return httpx2.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseBody(core_response.stream, self, key, site, kept),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        sites, self._sites = self._sites, OrderedDict()
        for site in sites.values():
            idle, site.idle = site.idle, []
            for connection, _stream in idle:
                await connection.aclose()

    async def _check_out(self, key: _SiteKey) -> _Site:
        """The site's pool, counted in use (so the sweep that follows leaves it alone)."""
        site = self._sites.get(key)
        if site is None:
            site = _Site()
            self._sites[key] = site
        else:
            self._sites.move_to_end(key)
        site.in_flight += 1
        await self._close_stale()
        return site

    async def _connection(
        self, site: _Site, origin: httpcore2.Origin, request: httpcore2.Request
    ) -> _Kept:
        """The site's most recently used live idle connection (and its socket), or a new one."""
        while site.idle:
            connection, stream = site.idle.pop()
            # A readable idle socket means the server closed its end (or sent
            # something unasked): httpcore2 2.17 no longer folds that into
            # has_expired(), it refuses the request instead, so ask first.
            if (
                connection.is_idle()
                and not connection.has_expired()
                and not stream.get_extra_info("is_readable")
            ):
                return connection, stream
            await connection.aclose()
        timeout = request.extensions.get("timeout", {}).get("connect")
        host = origin.host.decode("ascii")
        stream = await self.backend.connect_tcp(host, origin.port, timeout=timeout)
        if origin.scheme == b"https":
            try:
                stream = await stream.start_tls(
                    self._ssl_context,
                    server_hostname=request.extensions.get("sni_hostname") or host,
                    timeout=timeout,
                )
            except BaseException:
                await stream.aclose()
                raise
        connection = AsyncHTTP11Connection(
            origin=origin, stream=stream, keepalive_expiry=self._keepalive_expiry_s
        )
        return connection, stream

    async def _check_in(self, key: _SiteKey, site: _Site, kept: _Kept) -> None:
        """A response was closed: keep its connection if it is reusable and there is room."""
        connection = kept[0]
        open_site = self._sites.get(key) is site  # not so once the transport was closed
        if open_site and connection.is_idle() and len(site.idle) < self._per_site_keepalive:
            site.idle.append(kept)
        elif not connection.is_closed():
            await connection.aclose()
        self._release(key, site)

    def _release(self, key: _SiteKey, site: _Site) -> None:
        site.in_flight -= 1
        site.idle_since = self._clock()
        if site.in_flight == 0 and not site.idle and self._sites.get(key) is site:
            del self._sites[key]  # nothing kept (a failed connect, a closed answer): forget it

    async def _close_stale(self) -> None:
        """Close the least recently used sites while there are too many or they expired."""
        now = self._clock()
        for _ in range(len(self._sites)):
            key, site = next(iter(self._sites.items()))
            if site.in_flight:
                self._sites.move_to_end(key)  # in use, so as recent as any
                continue
            over = len(self._sites) > self._max_sites
            if not over and now - site.idle_since <= self._keepalive_expiry_s:
                return  # the rest were used more recently still
            del self._sites[key]
            for connection, _stream in site.idle:
                await connection.aclose()
