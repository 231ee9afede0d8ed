"""Thousands of synthetic web sites on one loopback port, for tests, demos and benchmarks.

The site is chosen by the Host header: `site-NNNN.test` behaves the way its
number says (`site_kind(n)`), the same way every run.  Most are ordinary
article sites; the rest are slow, drip-feed their body, fail with 500, reset
the connection, stream an endless body, redirect forever, forbid crawling in
robots.txt, answer robots.txt with 503, serve a PDF or PNG, serve a page
with no text, or redirect once to a page that works.

Pages are `/` and `/page/K`; `/private/...` exists but robots.txt forbids it.
`/_redirect?to=URL` on an ordinary site is a deliberate open redirect, so
tests can check what a crawler does when a site sends it somewhere else.
`GET /_stats` on any other host name returns the counters as JSON, and
`GET /_arrivals` when each request reached each site (`time.monotonic()`),
so a benchmark in another process can see the politeness the sites saw.
`expected_outcome(kind, …)` says what a crawler should record for each kind.

Run it alone with `python -m engine.simulation.site_server --port P --domains-file F --count N`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import random
import re
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from engine.crawl.outcomes import FetchOutcome

SITE_KINDS: tuple[str, ...] = (
    "normal",
    "slow",  # answers after `slow_s`
    "drip",  # headers at once, then a few bytes every `slow_s / 10` for `10 * slow_s`
    "broken_500",
    "broken_reset",  # the connection is reset instead of answered
    "huge",  # an endless-looking body (1 GiB); variant 0 declares its Content-Length
    "redirect_loop",
    "robots_disallow",
    "robots_unavailable",  # robots.txt answers 503
    "not_html",  # variant 0 serves a PDF, variant 1 a PNG
    "empty",  # valid HTML without any text
    "redirect_ok",  # / redirects to /home, which works
)

HUGE_BODY_BYTES = 1 << 30
_HUGE_CHUNK = (b"<p>" + b"filler text " * 60 + b"</p>\n") * 90  # ~66 KiB
_CYCLE = 30
# Spread the unusual kinds over each run of 30 numbers; the other 19 are normal.
_SPECIAL_BY_SLOT = {slot: kind for slot, kind in enumerate(SITE_KINDS[1:])}
_SITE_HOST = re.compile(r"^site-(\d{1,9})\.test\.?(?::\d+)?$")

_WORD_LIST = (
    "about above across after again against almost along already also always among answer "
    "around away back because become before began behind being below between both bring "
    "build built carry cause change city close cold color common could country course cover "
    "cross dark deep different direction during early earth east easy enough even every "
    "example family farm field figure final follow food force form found free friend front "
    "full garden give good great ground group grow half hand hard head hear heart heavy help "
    "high hold home horse hour house idea important island keep kind king land large late "
    "learn leave light line list little long machine made main make many measure might mile "
    "mind minute money month morning mountain move much music must name near need never "
    "next night north number often open order other paper part people picture piece place "
    "plain plan plant point power present problem question quick rain read ready real record "
    "remember rest river road rock room round rule school science season second sentence "
    "several shape short should side simple since small snow song sound south space special "
    "stand start state still stone story street strong study summer surface system table "
    "teacher thought through time together town travel tree true under unit until usual "
    "valley very voice walk warm watch water weather west where while white whole wind "
    "winter without wood word work world write year young"
)
_WORDS = tuple(_WORD_LIST.split())


def site_kind(n: int) -> str:
    """How `site-n.test` behaves: one of `SITE_KINDS`, fixed for a given number."""
    # 7 is coprime with 30, so every run of 30 numbers holds each unusual kind once.
    return _SPECIAL_BY_SLOT.get((n * 7) % _CYCLE, "normal")


_FIXED_OUTCOMES = {
    "normal": FetchOutcome.FETCHED,
    "broken_500": FetchOutcome.HTTP_ERROR,
    "broken_reset": FetchOutcome.REFUSED,
    "huge": FetchOutcome.TOO_LARGE,
    "redirect_loop": FetchOutcome.TOO_MANY_REDIRECTS,
    "robots_disallow": FetchOutcome.ROBOTS_BLOCKED,
    "robots_unavailable": FetchOutcome.ROBOTS_BLOCKED,  # RFC 9309: 5xx means "keep out"
    "not_html": FetchOutcome.NOT_HTML,
    "empty": FetchOutcome.EMPTY_TEXT,
    "redirect_ok": FetchOutcome.REDIRECTED,
}


def expected_outcome(
    kind: str, *, slow_s: float, read_timeout_s: float, total_timeout_s: float
) -> FetchOutcome:
    """What a crawl that keeps its rules stores for the home page of a site of `kind`.

    That is the crawl stage's outcome (a page without text is `empty_text`),
    with robots.txt respected, a body cap below the huge sites' 1 GiB and the
    server run with `slow_s`.  A slow site is fetched if it answers within
    both timeouts; a drip-fed one sends a drop every `slow_s / 10` for
    `10 × slow_s`, and must time out: timeouts that would let it finish have
    no single right answer and are refused.
    """
    if kind in _FIXED_OUTCOMES:
        return _FIXED_OUTCOMES[kind]
    if kind == "slow":
        answered = slow_s < min(read_timeout_s, total_timeout_s)
        return FetchOutcome.FETCHED if answered else FetchOutcome.TIMED_OUT
    if kind == "drip":
        if total_timeout_s < 10 * slow_s or read_timeout_s < slow_s / 10:
            return FetchOutcome.TIMED_OUT
        raise ValueError(
            f"a drip-fed site lasts {10 * slow_s:g}s: a total timeout of {total_timeout_s:g}s "
            "lets it finish, and what it then holds is no fixed outcome"
        )
    raise ValueError(f"unknown site kind {kind!r}")


def site_variant(n: int) -> int:
    """0 or 1: which flavour of its kind `site-n.test` shows (it alternates every 30 numbers)."""
    return (n // _CYCLE) % 2


def synthetic_domains(count: int) -> list[str]:
    """`site-0001.test` … `site-<count>.test`."""
    return [f"site-{n:04d}.test" for n in range(1, count + 1)]


def site_number(host: str) -> int | None:
    """The number in a `site-NNNN.test[:port]` Host header, or None for any other host."""
    match = _SITE_HOST.match(host.strip().lower())
    return int(match.group(1)) if match else None


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(_WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize()


def page_html(n: int, k: int) -> bytes:
    """Page `k` of site `n` (0 is the home page): an article with boilerplate around it."""
    rng = random.Random(n * 100_003 + k)
    site_name = f"{_sentence(rng, 2, 3).title()} {n:04d}"
    title = _sentence(rng, 4, 8).title()
    paragraphs = [
        " ".join(_sentence(rng, 8, 20) + "." for _ in range(rng.randint(3, 6)))
        for _ in range(rng.randint(3, 5))
    ]
    targets = rng.sample([p for p in range(1, 61) if p != k], rng.randint(3, 5))
    links = "\n".join(
        f'<li><a href="/page/{p}">{html.escape(_sentence(rng, 2, 5))}</a></li>' for p in targets
    )
    body = "\n".join(f"<p>{html.escape(text)}</p>" for text in paragraphs)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} | {html.escape(site_name)}</title></head>\n<body>\n"
        f'<header><nav><a href="/">Home</a> <span>Topics</span> <span>Archive</span>'
        f"<span>Subscribe</span></nav></header>\n"
        f"<main><article><h1>{html.escape(title)}</h1>\n{body}\n"
        f"<h2>Read next</h2><ul>\n{links}\n</ul></article></main>\n"
        f"<footer><p>© {html.escape(site_name)}. All rights reserved.</p>"
        "<p>Privacy policy · Terms of use · Cookie settings</p></footer>\n</body></html>\n"
    ).encode()


_EMPTY_PAGE = (
    b'<!doctype html>\n<html><head><meta charset="utf-8"><title></title></head>\n'
    b"<body><div></div></body></html>\n"
)
_PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17) + b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(slots=True)
class SiteServerStats:
    """Live counters; read them, don't write them.  Arrival times are `time.monotonic()`."""

    requests: int = 0
    connections: int = 0
    bytes_sent: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    robots: int = 0  # requests for robots.txt, every host's
    requests_by_host: Counter[str] = field(default_factory=Counter)
    robots_by_host: Counter[str] = field(default_factory=Counter)
    in_flight_by_host: Counter[str] = field(default_factory=Counter)
    max_in_flight_by_host: Counter[str] = field(default_factory=Counter)
    bytes_sent_by_host: Counter[str] = field(default_factory=Counter)
    arrivals_by_host: dict[str, deque[float]] = field(default_factory=dict)

    def arrivals(self) -> dict[str, list[float]]:
        """When each host's requests arrived (its latest 256), oldest first."""
        return {host: list(times) for host, times in self.arrivals_by_host.items()}

    def as_dict(self) -> dict[str, Any]:
        """Totals only: per-host maps grow with the crawl."""
        return {
            "requests": self.requests,
            "connections": self.connections,
            "bytes_sent": self.bytes_sent,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "robots": self.robots,
            "hosts": len(self.requests_by_host),
        }


class _StampingHandler(RequestHandler):
    """aiohttp's connection handler, noting when the latest bytes came in.

    A request's handler runs a loop turn or more after its bytes arrived; on
    a busy server that is milliseconds, which would blur the gaps between a
    host's requests.  A crawler sends a GET whole and waits for the answer,
    so the latest bytes before a request's handler runs are that request's.
    """

    __slots__ = ("data_at",)

    def data_received(self, data: bytes) -> None:
        self.data_at = time.monotonic()
        super().data_received(data)


class _CountingServer(web.Server):
    """aiohttp's low-level server, counting accepted connections and stamping arrivals."""

    def __init__(self, stats: SiteServerStats, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stats = stats

    def __call__(self) -> RequestHandler:
        # What `web.Server.__call__` does, with our handler class.
        return _StampingHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._stats.connections += 1
        super().connection_made(handler, transport)


class SiteServer:
    """The synthetic sites on one port.  Use as `async with SiteServer() as server:`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        slow_s: float = 3.0,
        crawl_delay_s: int | None = None,
    ) -> None:
        if slow_s <= 0:
            raise ValueError(f"slow_s must be positive, got {slow_s}")
        self._host = host
        self._port = port
        self.slow_s = slow_s
        self.crawl_delay_s = crawl_delay_s
        self.stats = SiteServerStats()
        self._runner: web.ServerRunner | None = None
        self._bound_port: int | None = None
        self._request_seen = asyncio.Condition()

    @property
    def port(self) -> int:
        """The port being served; only while serving."""
        if self._bound_port is None:
            raise RuntimeError("the site server is not serving")
        return self._bound_port

    async def start(self) -> int:
        """Listen and return the bound port."""
        if self._runner is not None:
            raise RuntimeError("the site server is already serving")
        # handler_cancellation: a crawler that gives up on a slow site frees its handler.
        server = _CountingServer(
            self.stats, self._handle, handler_cancellation=True, access_log=None
        )
        runner = web.ServerRunner(server, shutdown_timeout=0.25)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        return self._bound_port

    async def stop(self) -> None:
        """Stop listening and end every open request.  Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._bound_port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_for_requests(self, count: int) -> None:
        """Return once the server has received at least `count` requests in all."""
        async with self._request_seen:
            await self._request_seen.wait_for(lambda: self.stats.requests >= count)

    # --- request handling ---------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        stats = self.stats
        host = request.host.split(":", 1)[0].lower()
        stats.requests += 1
        stats.requests_by_host[host] += 1
        if request.path == "/robots.txt":
            stats.robots += 1
            stats.robots_by_host[host] += 1
        arrivals = stats.arrivals_by_host.setdefault(host, deque(maxlen=256))
        arrivals.append(getattr(request.protocol, "data_at", None) or time.monotonic())
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        stats.in_flight_by_host[host] += 1
        stats.max_in_flight_by_host[host] = max(
            stats.max_in_flight_by_host[host], stats.in_flight_by_host[host]
        )
        async with self._request_seen:
            self._request_seen.notify_all()
        try:
            number = site_number(request.host)
            if number is None:
                if request.path == "/_stats":
                    return web.json_response(stats.as_dict())
                if request.path == "/_arrivals":
                    return web.json_response(stats.arrivals())
                return web.Response(status=404, text="no such site\n")
            return await self._site(request, number, host)
        finally:
            stats.in_flight -= 1
            stats.in_flight_by_host[host] -= 1
            if not stats.in_flight_by_host[host]:
                del stats.in_flight_by_host[host]

    async def _site(self, request: web.BaseRequest, n: int, host: str) -> web.StreamResponse:
        kind = site_kind(n)
        path = request.path
        if path == "/robots.txt":
            return self._robots(kind)
        if kind == "broken_500":
            return web.Response(
                status=500, text="<h1>Internal Server Error</h1>", content_type="text/html"
            )
        if kind == "broken_reset":
            return _reset(request)
        if kind == "redirect_loop":
            step = int(path.rsplit("/", 1)[1]) if path.startswith("/loop/") else 0
            raise web.HTTPFound(f"/loop/{step + 1}")
        if kind == "huge":
            return await self._huge(request, n, host)
        if kind == "not_html":
            if site_variant(n) == 0:
                return web.Response(body=_PDF, content_type="application/pdf")
            return web.Response(body=_PNG, content_type="image/png")
        if kind == "empty":
            return _html(_EMPTY_PAGE)
        if kind == "redirect_ok" and path == "/":
            raise web.HTTPMovedPermanently("/home")
        if kind == "slow":
            await asyncio.sleep(self.slow_s)
        if kind == "drip":
            return await self._drip(request, host)
        if path == "/_redirect" and kind == "normal":
            raise web.HTTPFound(request.query.get("to", "/"))
        page = _page_number(path, kind)
        if page is None:
            return web.Response(status=404, text="<h1>Not found</h1>", content_type="text/html")
        return _html(page_html(n, page))

    def _robots(self, kind: str) -> web.Response:
        if kind == "robots_disallow":
            return web.Response(text="User-agent: *\nDisallow: /\n")
        if kind == "robots_unavailable":
            return web.Response(status=503, text="try later\n")
        if kind in ("broken_500", "broken_reset"):
            # No robots.txt: the broken pages themselves are what a crawler should meet.
            return web.Response(status=404, text="not found\n")
        lines = ["User-agent: *", "Disallow: /private/"]
        if self.crawl_delay_s is not None:
            lines.append(f"Crawl-delay: {self.crawl_delay_s}")
        return web.Response(text="\n".join(lines) + "\n")

    async def _huge(self, request: web.BaseRequest, n: int, host: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        if site_variant(n) == 0:
            response.content_length = HUGE_BODY_BYTES
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        with contextlib.suppress(ConnectionError):  # the crawler hung up: that's the point
            while sent < HUGE_BODY_BYTES:
                chunk = _HUGE_CHUNK[: HUGE_BODY_BYTES - sent]
                await response.write(chunk)
                sent += len(chunk)
                self.stats.bytes_sent += len(chunk)
                self.stats.bytes_sent_by_host[host] += len(chunk)
            await response.write_eof()
        return response

    async def _drip(self, request: web.BaseRequest, host: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        drop = b"<p>one more line, slowly</p>\n"
        with contextlib.suppress(ConnectionError):
            await response.write(b"<!doctype html><html><body>\n")
            for _ in range(100):
                await asyncio.sleep(self.slow_s / 10)
                await response.write(drop)
                self.stats.bytes_sent += len(drop)
                self.stats.bytes_sent_by_host[host] += len(drop)
            await response.write(b"</body></html>\n")
            await response.write_eof()
        return response


def _page_number(path: str, kind: str) -> int | None:
    if path == "/" or (path == "/home" and kind == "redirect_ok"):
        return 0
    for prefix in ("/page/", "/private/"):
        if path.startswith(prefix) and path[len(prefix) :].isdigit():
            return int(path[len(prefix) :])
    return None


def _html(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="text/html", charset="utf-8")


def _reset(request: web.BaseRequest) -> web.Response:
    """Reset the connection (RST, not FIN), as a crashing server or middlebox would."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never sent: the transport is gone


@contextlib.asynccontextmanager
async def serve_sites(
    host: str = "127.0.0.1",
    port: int = 0,
    slow_s: float = 3.0,
    crawl_delay_s: int | None = None,
) -> AsyncIterator[int]:
    """Serve the synthetic sites for the duration of the block; yields the bound port."""
    async with SiteServer(host, port, slow_s=slow_s, crawl_delay_s=crawl_delay_s) as server:
        yield server.port


# --- running it as a process -----------------------------------------------------------------


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.simulation.site_server",
        description="Serve synthetic web sites site-NNNN.test on one loopback port.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--count", type=int, default=100, help="how many domains to list")
    parser.add_argument(
        "--domains-file",
        type=Path,
        help="write the domains here, one per line, as host:port (just host on port 80)",
    )
    parser.add_argument("--slow-s", type=float, default=3.0, help="delay of the slow sites")
    parser.add_argument("--crawl-delay", type=int, default=None, help="Crawl-delay for robots.txt")
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit when stdin closes (parent died)"
    )
    return parser


class _ParentGone(asyncio.Protocol):
    """Sets `stop` when stdin closes: even a kill -9 of the parent closes the pipe."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.exit_with_parent:
        await loop.connect_read_pipe(lambda: _ParentGone(stop), sys.stdin)
    server = SiteServer(args.host, args.port, slow_s=args.slow_s, crawl_delay_s=args.crawl_delay)
    async with server:
        port = server.port
        if args.domains_file is not None:
            suffix = "" if port == 80 else f":{port}"
            lines = [f"{domain}{suffix}\n" for domain in synthetic_domains(args.count)]
            args.domains_file.write_text("".join(lines), encoding="utf-8")
        print(
            json.dumps({"host": args.host, "port": port, "count": args.count}),
            flush=True,
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; 0 on a clean exit."""
    args = _argument_parser().parse_args(argv)
    if args.count < 0:
        raise SystemExit("--count must not be negative")
    asyncio.run(_serve_until_signalled(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
