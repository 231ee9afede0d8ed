"""The asyncio network backend against real loopback sockets: data, ends, errors, timeouts, TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpcore2
import pytest

from engine.crawl.asyncio_network import AsyncioNetworkBackend, TLSHandshakeError
from tests.engine.conftest import tls_server

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A loopback server running `handler` for each connection; yields its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def echo_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"you said: " + await reader.readline())
    await writer.drain()
    writer.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # says nothing until the client goes away
    writer.close()


@pytest.fixture
def backend() -> AsyncioNetworkBackend:
    return AsyncioNetworkBackend()


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listen backlog is full, so a new connect is never answered."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # takes the one backlog place
        yield listener.getsockname()[1]


# --- plain connections -----------------------------------------------------------------------


async def test_a_connection_carries_bytes_both_ways_and_knows_its_peer(
    backend: AsyncioNetworkBackend,
) -> None:
    async with serving(echo_line) as port:
        stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        await stream.write(b"hello\n", timeout=5)
        answer = b""
        while chunk := await stream.read(4, timeout=5):  # small reads: the rest stays buffered
            assert len(chunk) <= 4
            answer += chunk
        assert answer == b"you said: hello\n"
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
        assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
        assert stream.get_extra_info("ssl_object") is None
        await stream.aclose()


async def test_the_end_of_stream_reads_as_empty_and_the_stream_stays_readable(
    backend: AsyncioNetworkBackend,
) -> None:
    async with serving(echo_line) as port:
        stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        assert stream.get_extra_info("is_readable") is False  # nothing sent, nothing to read
        await stream.write(b"bye\n", timeout=5)
        while await stream.read(1024, timeout=5):
            pass
        # A pool asks this before reusing an idle connection: closed means "readable".
        assert stream.get_extra_info("is_readable") is True
        assert await stream.read(1024, timeout=5) == b""
        await stream.aclose()


async def test_a_read_that_waits_too_long_is_a_read_timeout(
    backend: AsyncioNetworkBackend,
) -> None:
    async with serving(silent) as port:
        stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        with pytest.raises(httpcore2.ReadTimeout):
            await stream.read(1024, timeout=0.2)
        await stream.aclose()


async def test_a_connection_reset_is_a_read_error(backend: AsyncioNetworkBackend) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: the close is a RST

    async with serving(reset) as port:
        stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        await stream.write(b"anyone?\n", timeout=5)
        with pytest.raises(httpcore2.ReadError):
            await stream.read(1024, timeout=5)
        await stream.aclose()


async def test_writing_to_a_closed_connection_is_a_write_error(
    backend: AsyncioNetworkBackend,
) -> None:
    async with serving(echo_line) as port:
        stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        await stream.aclose()
        with pytest.raises(httpcore2.WriteError):
            await stream.write(b"too late\n", timeout=5)


async def test_a_refused_connect_is_a_connect_error(backend: AsyncioNetworkBackend) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(httpcore2.ConnectError):
        await backend.connect_tcp("127.0.0.1", port, timeout=5)


async def test_an_unanswered_connect_is_a_connect_timeout(
    backend: AsyncioNetworkBackend, unanswered_port: int
) -> None:
    with pytest.raises(httpcore2.ConnectTimeout):
        await backend.connect_tcp("127.0.0.1", unanswered_port, timeout=0.2)


async def test_a_fast_sender_is_held_back_until_the_reader_reads(
    backend: AsyncioNetworkBackend,
) -> None:
    # More than the kernel's socket buffers can hold on both ends, so without
    # back-pressure from the reader the whole lot would land in our memory.
    total = 32 * 1024 * 1024
    sent_all = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(bytes(total))
        await writer.drain()
        sent_all.set()
        writer.close()

    async with serving(flood) as port:
        stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sent_all.wait(), 0.5)  # nobody reads: the sender must stall
        received = 0
        while chunk := await stream.read(64 * 1024, timeout=5):
            received += len(chunk)
        await stream.aclose()

    assert received == total
    assert sent_all.is_set()


# --- TLS -------------------------------------------------------------------------------------


async def test_tls_carries_bytes_to_a_trusted_server(
    backend: AsyncioNetworkBackend, certificate: tuple[Path, Path]
) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    async with serving(echo_line, tls=tls_server(certificate)) as port:
        plain = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        stream = await plain.start_tls(trusting, server_hostname="localhost", timeout=5)
        await stream.write(b"secret\n", timeout=5)
        answer = b""
        while chunk := await stream.read(1024, timeout=5):
            answer += chunk
        assert answer == b"you said: secret\n"
        assert isinstance(stream.get_extra_info("ssl_object"), ssl.SSLObject)
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
        await stream.aclose()


async def test_an_untrusted_certificate_fails_the_handshake(
    backend: AsyncioNetworkBackend, certificate: tuple[Path, Path]
) -> None:
    async with serving(echo_line, tls=tls_server(certificate)) as port:
        plain = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        with pytest.raises(TLSHandshakeError, match="certificate"):
            await plain.start_tls(
                ssl.create_default_context(), server_hostname="localhost", timeout=5
            )


async def test_tls_against_a_plain_text_server_fails_the_handshake(
    backend: AsyncioNetworkBackend,
) -> None:
    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    async with serving(plain_http) as port:
        plain = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        with pytest.raises(TLSHandshakeError):
            await plain.start_tls(
                ssl.create_default_context(), server_hostname="localhost", timeout=5
            )


async def test_a_handshake_the_server_never_answers_is_a_connect_timeout(
    backend: AsyncioNetworkBackend,
) -> None:
    async with serving(silent) as port:
        plain = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        with pytest.raises(httpcore2.ConnectTimeout):
            await plain.start_tls(
                ssl.create_default_context(), server_hostname="localhost", timeout=0.2
            )
