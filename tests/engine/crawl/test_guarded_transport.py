"""The guarded transport against synthetic sites on loopback: pools per site, checks on connect."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore2
import httpx2
import pytest

from engine.crawl.address_policy import AddressPolicy, StaticResolver
from engine.crawl.asyncio_network import AsyncioNetworkBackend
from engine.crawl.guarded_transport import (
    BlockedAddressError,
    GuardedNetworkBackend,
    GuardedTransport,
)
from engine.simulation.site_server import SiteServer, site_kind

TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


def site(kind: str, skip: int = 0) -> str:
    numbers = (n for n in range(1, 1000) if site_kind(n) == kind)
    for _ in range(skip):
        next(numbers)
    return f"site-{next(numbers):04d}.test"


def guarded(allow: Iterable[str] = ("127.0.0.0/8",)) -> GuardedNetworkBackend:
    return GuardedNetworkBackend(StaticResolver(default="127.0.0.1"), AddressPolicy(tuple(allow)))


async def get(transport: GuardedTransport, url: str) -> httpx2.Response:
    """GET `url` through `transport` and read the whole answer."""
    request = httpx2.Request("GET", url, extensions={"timeout": TIMEOUTS})
    response = await transport.handle_async_request(request)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


@pytest.fixture
async def sites() -> AsyncIterator[SiteServer]:
    async with SiteServer(slow_s=0.3) as server:
        yield server


@pytest.fixture
async def transport() -> AsyncIterator[GuardedTransport]:
    transport = GuardedTransport(guarded())
    yield transport
    await transport.aclose()


# --- pooling ---------------------------------------------------------------------------------


async def test_requests_to_one_site_share_one_connection(
    sites: SiteServer, transport: GuardedTransport
) -> None:
    base = f"http://{site('normal')}:{sites.port}"

    for path in ("/robots.txt", "/", "/page/1"):
        assert (await get(transport, base + path)).status_code == 200

    assert sites.stats.requests == 3
    assert sites.stats.connections == 1
    assert (transport.sites, transport.idle_connections) == (1, 1)


async def test_each_site_keeps_connections_of_its_own(
    sites: SiteServer, transport: GuardedTransport
) -> None:
    first = f"http://{site('normal')}:{sites.port}/"
    second = f"http://{site('normal', skip=1)}:{sites.port}/"

    for url in (first, second, first, second):
        await get(transport, url)

    assert sites.stats.connections == 2
    assert (transport.sites, transport.idle_connections) == (2, 2)


async def test_concurrent_requests_open_connections_but_only_a_few_stay_idle(
    sites: SiteServer,
) -> None:
    transport = GuardedTransport(guarded(), per_site_keepalive=2)
    url = f"http://{site('slow')}:{sites.port}/"
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(4):
                group.create_task(get(transport, url))
        assert sites.stats.connections == 4
        assert transport.idle_connections == 2

        await get(transport, url)
        await get(transport, url)
        assert sites.stats.connections == 4  # the two kept were reused
    finally:
        await transport.aclose()


async def test_the_least_recently_used_site_is_closed_beyond_max_sites(
    sites: SiteServer,
) -> None:
    transport = GuardedTransport(guarded(), max_sites=2)
    a, b, c = (f"http://{site('normal', skip=k)}:{sites.port}/" for k in range(3))
    try:
        for url in (a, b, c):
            await get(transport, url)
        assert (transport.sites, transport.idle_connections) == (2, 2)

        await get(transport, a)  # was closed for c: a new connection
        await get(transport, c)  # still kept
        assert sites.stats.connections == 4
        assert transport.sites == 2
    finally:
        await transport.aclose()


async def test_a_site_idle_past_the_keepalive_expiry_is_closed_by_the_next_request(
    sites: SiteServer,
) -> None:
    now = [100.0]
    transport = GuardedTransport(guarded(), keepalive_expiry_s=5.0, clock=lambda: now[0])
    first = f"http://{site('normal')}:{sites.port}/"
    second = f"http://{site('normal', skip=1)}:{sites.port}/"
    try:
        await get(transport, first)
        now[0] += 4.0
        await get(transport, second)
        assert (transport.sites, transport.idle_connections) == (2, 2)  # not expired yet

        now[0] += 4.5  # the first site has now been idle 8.5 s, the second 4.5 s
        await get(transport, second)
        assert (transport.sites, transport.idle_connections) == (1, 1)
        assert sites.stats.connections == 2
    finally:
        await transport.aclose()


async def test_closing_the_transport_closes_every_kept_connection(sites: SiteServer) -> None:
    transport = GuardedTransport(guarded())
    for k in range(3):
        await get(transport, f"http://{site('normal', skip=k)}:{sites.port}/")

    await transport.aclose()

    assert (transport.sites, transport.idle_connections) == (0, 0)


async def test_an_answer_finished_after_the_transport_closed_closes_its_connection() -> None:
    client_left = asyncio.Event()

    async def answer_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()  # until the client closes its end
        client_left.set()
        writer.close()

    server = await asyncio.start_server(answer_then_wait, "127.0.0.1", 0)
    url = f"http://{site('normal')}:{server.sockets[0].getsockname()[1]}/"
    transport = GuardedTransport(guarded())
    try:
        request = httpx2.Request("GET", url, extensions={"timeout": TIMEOUTS})
        response = await transport.handle_async_request(request)
        await transport.aclose()
        assert await response.aread() == b"ok"  # the answer still arrives...
        await response.aclose()

        await asyncio.wait_for(client_left.wait(), 5)  # ...and its connection is not kept open
    finally:
        server.close()
        await server.wait_closed()

    assert (transport.sites, transport.idle_connections) == (0, 0)


async def test_only_http_and_https_are_fetched(transport: GuardedTransport) -> None:
    with pytest.raises(httpx2.UnsupportedProtocol):
        await get(transport, "ftp://site-0001.test/")


# --- connections that cannot be kept ---------------------------------------------------------


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    transport: GuardedTransport,
) -> None:
    connections = 0
    closed = asyncio.Event()

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # keep-alive, says HTTP
        await writer.drain()
        writer.close()  # ...and then the server closes the idle connection anyway
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    url = f"http://{site('normal')}:{server.sockets[0].getsockname()[1]}/"
    try:
        assert (await get(transport, url)).content == b"ok"
        await closed.wait()
        await asyncio.sleep(0.05)  # the close is already on our socket: let the loop read it
        assert transport.idle_connections == 1

        assert (await get(transport, url)).content == b"ok"
    finally:
        server.close()
        await server.wait_closed()

    assert connections == 2


async def test_a_failed_connect_leaves_nothing_behind(transport: GuardedTransport) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(httpx2.ConnectError):
        await get(transport, f"http://{site('normal')}:{port}/")

    assert transport.sites == 0


async def test_an_answer_given_up_midway_does_not_keep_its_connection(
    sites: SiteServer, transport: GuardedTransport
) -> None:
    request = httpx2.Request(
        "GET", f"http://{site('huge')}:{sites.port}/", extensions={"timeout": TIMEOUTS}
    )
    response = await transport.handle_async_request(request)
    async for _chunk in response.aiter_raw():
        break  # one piece of an endless body is plenty
    await response.aclose()

    assert (transport.sites, transport.idle_connections) == (0, 0)


async def test_a_request_cancelled_while_waiting_does_not_keep_its_connection(
    sites: SiteServer, transport: GuardedTransport
) -> None:
    slow = f"http://{site('slow')}:{sites.port}/"  # answers after 0.3 s

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await get(transport, slow)

    assert (transport.sites, transport.idle_connections) == (0, 0)
    assert (await get(transport, slow)).status_code == 200
    assert sites.stats.connections == 2


async def test_an_error_answer_is_returned_as_it_is(
    sites: SiteServer, transport: GuardedTransport
) -> None:
    response = await get(transport, f"http://{site('broken_500')}:{sites.port}/")

    assert response.status_code == 500
    assert b"Internal Server Error" in response.content


# --- the address checks ----------------------------------------------------------------------


class MisdirectedBackend(AsyncioNetworkBackend):
    """Connects to 127.0.0.1 whatever address it is given, as a hijacked route would."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return await super().connect_tcp("127.0.0.1", port, timeout, local_address, socket_options)


async def test_the_address_really_reached_is_checked_too(sites: SiteServer) -> None:
    # The policy admits 127.0.0.2, which the name resolves to; the socket ends up at 127.0.0.1.
    backend = GuardedNetworkBackend(
        StaticResolver(default="127.0.0.2"),
        AddressPolicy(("127.0.0.2/32",)),
        inner=MisdirectedBackend(),
    )
    transport = GuardedTransport(backend)
    try:
        with pytest.raises(httpx2.ConnectError) as caught:
            await get(transport, f"http://{site('normal')}:{sites.port}/")
    finally:
        await transport.aclose()

    assert isinstance(caught.value.__cause__, BlockedAddressError)
    assert "connected to 127.0.0.1" in str(caught.value)
    assert sites.stats.requests == 0
    assert backend.connect_attempts == 1


async def test_a_refused_address_is_never_connected_to(
    sites: SiteServer,
) -> None:
    backend = guarded(allow=())
    transport = GuardedTransport(backend)
    try:
        with pytest.raises(httpx2.ConnectError) as caught:
            await get(transport, f"http://{site('normal')}:{sites.port}/")
    finally:
        await transport.aclose()

    assert isinstance(caught.value.__cause__, BlockedAddressError)
    assert "loopback" in str(caught.value)
    assert backend.connect_attempts == 0
    assert sites.stats.connections == 0
    assert transport.sites == 0


async def test_unix_sockets_are_never_opened() -> None:
    with pytest.raises(BlockedAddressError):
        await guarded().connect_unix_socket("/var/run/docker.sock")


def test_nonsense_pool_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        GuardedTransport(guarded(), max_sites=0)
    with pytest.raises(ValueError):
        GuardedTransport(guarded(), per_site_keepalive=0)
