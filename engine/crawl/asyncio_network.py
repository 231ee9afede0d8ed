"""An httpcore2 network backend written straight on asyncio's transports and protocols.

httpcore2's own asyncio backend goes through anyio, which costs a cancel
scope, an exception map and a few layers of stream wrappers on every read
and write; for a crawler that makes thousands of short requests that was
a large share of its CPU.  Here a read is a look at a buffer the protocol
filled, and a wait is one future with one timer.

The semantics httpcore2 relies on are kept: a read or write that takes
longer than its timeout raises `ReadTimeout` / `WriteTimeout`, a broken
connection raises `ReadError` / `WriteError`, a read at end of stream
returns b"", and connect and TLS failures raise `ConnectError` /
`ConnectTimeout` (a TLS failure as its subclass `TLSHandshakeError`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any

import httpcore2

# Past this many unread bytes the socket stops being read until the reader
# catches up: a server pushing an endless body cannot fill our memory.
_READ_HIGH_WATER = 256 * 1024


class TLSHandshakeError(httpcore2.ConnectError):
    """The TLS handshake failed: bad certificate, wrong protocol, or a dropped handshake.

    Named apart from a refused connection so that an https-first crawler can
    tell "this site has no TLS" from "nothing listens here".
    """


class _StreamProtocol(asyncio.Protocol):
    """Buffers what arrives and wakes the one reader (or writer) waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self._read_waiter: asyncio.Future[bool] | None = None
        self._drain_waiter: asyncio.Future[bool] | None = None
        self._reading_paused = False
        self.writing_paused = False

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _READ_HIGH_WATER and not self._reading_paused:
            assert self.transport is not None
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close our side too: HTTP/1.1 has no use for a half-open connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake_reader()
        self.writing_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # -- for the stream ----------------------------------------------------------------------
    @property
    def readable(self) -> bool:
        """A read would not wait: data, end of stream or a closed connection is there."""
        return self.buffered > 0 or self.eof or self.lost

    def take(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` of what is buffered (b"" if nothing is)."""
        if not self.chunks:
            return b""
        first = self.chunks[0]
        if len(first) <= max_bytes:
            self.chunks.popleft()
        else:
            self.chunks[0] = first[max_bytes:]
            first = first[:max_bytes]
        self.buffered -= len(first)
        if self._reading_paused and self.buffered <= _READ_HIGH_WATER // 4:
            self._reading_paused = False
            if self.transport is not None and not self.lost:
                self.transport.resume_reading()
        return first

    async def wait_readable(self, timeout: float | None) -> bool:
        """Wait until a read would not wait; False if `timeout` passed first."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._read_waiter = waiter
        return await _wait(waiter, timeout)

    async def wait_writable(self, timeout: float | None) -> bool:
        """Wait until the transport's write buffer has drained; False on timeout."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._drain_waiter = waiter
        return await _wait(waiter, timeout)

    def _wake_reader(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


async def _wait(waiter: asyncio.Future[bool], timeout: float | None) -> bool:
    """Await `waiter`, which resolves True when woken; False if `timeout` ran out first.

    One timer handle per wait: far cheaper than a cancel scope or `wait_for`,
    and a cancellation from outside (a total deadline) passes straight through.
    """
    if timeout is None:
        return await waiter
    timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
    try:
        return await waiter
    finally:
        timer.cancel()


class AsyncioStream(httpcore2.AsyncNetworkStream):
    """One TCP connection (TLS or not), read and written through `_StreamProtocol`."""

    def __init__(
        self, transport: asyncio.Transport, protocol: _StreamProtocol, *, tls: bool = False
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._tls = tls

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.readable and not await protocol.wait_readable(timeout):
            raise httpcore2.ReadTimeout(f"no data within {timeout}s")
        if protocol.buffered:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore2.ReadError(str(protocol.error) or "connection lost") from (
                protocol.error
            )
        return b""  # the peer closed: end of stream

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.lost or self._transport.is_closing():
            raise httpcore2.WriteError("the connection is closed")
        self._transport.write(buffer)
        if protocol.writing_paused and not await protocol.wait_writable(timeout):
            raise httpcore2.WriteTimeout(f"the peer took nothing for {timeout}s")
        if protocol.lost and protocol.error is not None:
            raise httpcore2.WriteError(str(protocol.error)) from protocol.error

    async def aclose(self) -> None:
        if self._tls:
            # No close_notify exchange: a crawler gains nothing from it, and a
            # graceful TLS shutdown keeps the socket open up to 30 s more.
            self._transport.abort()
        else:
            self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                )
        except TimeoutError:
            self._transport.abort()
            raise httpcore2.ConnectTimeout(
                f"TLS handshake with {server_hostname} took longer than {timeout}s"
            ) from None
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            self._transport.abort()
            raise TLSHandshakeError(
                f"TLS handshake with {server_hostname} failed: {exc or type(exc).__name__}"
            ) from exc
        assert isinstance(tls, asyncio.Transport)
        self._protocol.transport = tls
        return AsyncioStream(tls, self._protocol, tls=True)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # The pool asks this of every idle connection before reusing it; the
            # protocol already knows (a peer's close arrives as EOF), no syscall needed.
            return self._protocol.readable
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info in ("socket", "ssl_object"):
            return self._transport.get_extra_info(info)
        return None


class AsyncioNetworkBackend(httpcore2.AsyncNetworkBackend):
    """Opens `AsyncioStream`s.  Connects to exactly the host given; resolving names
    and deciding which addresses are acceptable is the caller's business."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _StreamProtocol,
                    host,
                    port,
                    local_addr=None if local_address is None else (local_address, 0),
                )
        except TimeoutError:
            raise httpcore2.ConnectTimeout(
                f"connecting to {host}:{port} took longer than {timeout}s"
            ) from None
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc) or type(exc).__name__) from exc
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not supported by this backend")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
