"""A fetched page turned into its main text, title, language and same-site links.

`extract_page` is a plain top-level function of bytes and strings, so it
pickles by reference and runs in worker processes: HTML parsing is pure CPU
(a few milliseconds a page) and would stall the event loop, and threads
would still share one GIL.  `PageExtractor` owns the pool of those workers.

Two parsers, each for what it is best at (see tests/benchmarks/
extraction_choice.py for the figures): trafilatura in fast mode finds the
main text and leaves out navigation, sidebars, comments and footers;
selectolax's lexbor parser is much faster and reads the title, the language
and the links, which need no judgement about boilerplate.

Each page has a time limit: trafilatura can run indefinitely on some
pathological pages, and such a page would hold its site, and so the job,
open for ever.  The pool (pebble's) kills a worker past the limit and starts
another; the page fails with `ExtractionTimedOut`.
"""

from __future__ import annotations

import asyncio
import codecs
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Self
from urllib.parse import urljoin, urlsplit

import trafilatura
from pebble import ProcessExpired, ProcessPool
from selectolax.lexbor import LexborHTMLParser
from tld import get_fld  # the Public Suffix List; trafilatura installs it (via courlan)
from trafilatura.settings import Extractor

from engine.config.settings import CrawlSettings
from engine.crawl.extraction_unavailable import ExtractionUnavailable
from engine.crawl.targets import link_target

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", ""})
"""Media types read as HTML; "" is a response without a Content-Type."""

# Comments are left out: under an article they are other people's text, not
# the page's (on the benchmark's WordPress pages, whose comment threads are in
# the HTML, F1 fell from 1.000 to 0.908 with them; other layouts were equal).
# Tables are kept: an article's own table is main text, and leaving them out
# saved 3% of the CPU for 0.003 less F1.  Full (not fast) mode scored the same
# F1 at 1.39× the CPU.
_TRAFILATURA = Extractor(output_format="txt", fast=True, comments=False, tables=True)
# Where a <meta> charset is looked for.  The HTML standard's prescan stops at
# 1024 bytes; real pages put long scripts first, and browsers look further.
_PRESCAN_BYTES = 4096
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# The WHATWG Encoding standard reads these labels as windows-1252, and so do
# browsers: pages labelled latin-1 use its curly quotes and dashes (0x80–0x9F).
_WINDOWS_1252_LABELS = frozenset(
    {"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "ascii", "us-ascii", "cp819"}
)
_LANG_TAG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
_WHITESPACE = re.compile(r"\s+")
_URL_NOISE = str.maketrans({"\t": None, "\n": None, "\r": None, " ": "%20"})


@dataclass(frozen=True, slots=True)
class ExtractedPage:
    """What a page says, without its boilerplate.

    `links` are absolute, fragment-free http(s) URLs on the same site
    (registrable domain) as the page, normalised as crawl targets are, in
    page order without repeats.  `lang` is the primary language subtag the
    page declares ("en"), or None.  `n_chars` is `len(text)`.
    """

    title: str
    text: str
    links: tuple[str, ...]
    lang: str | None
    n_chars: int


EMPTY_PAGE = ExtractedPage(title="", text="", links=(), lang=None, n_chars=0)


def extract_page(html: bytes, url: str, content_type: str) -> ExtractedPage:
    """The main text, title, language and same-site links of one fetched page.

    `content_type` is the response's Content-Type header: its charset is
    honoured, then a <meta> charset, then UTF-8 with undecodable bytes as
    U+FFFD.  `text/plain` is passed through as the text; a type that is not
    HTML or plain text (images, PDFs) gives an empty page.  Runs in a worker
    process; errors propagate to the caller.
    """
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "text/plain":
        text = decode_page(html, content_type).strip()
        return ExtractedPage(title="", text=text, links=(), lang=None, n_chars=len(text))
    if media_type not in HTML_TYPES:
        return EMPTY_PAGE
    document = decode_page(html, content_type)
    if not document.strip():
        return EMPTY_PAGE
    tree = LexborHTMLParser(document)
    text = trafilatura.extract(document, options=_TRAFILATURA) or ""
    return ExtractedPage(
        title=_title(tree),
        text=text,
        links=_same_site_links(tree, url),
        lang=_lang(tree),
        n_chars=len(text),
    )


def decode_page(body: bytes, content_type: str) -> str:
    """`body` as text, in the order browsers use: a byte-order mark, the
    Content-Type charset, a <meta> charset, else UTF-8; bad bytes become U+FFFD."""
    for bom, bom_encoding in _BOMS:
        if body.startswith(bom):
            return body[len(bom) :].decode(bom_encoding, errors="replace")
    declared = _HEADER_CHARSET.search(content_type)
    encoding: str | None = _python_codec(declared.group(1)) if declared else None
    if encoding is None:
        meta = _META_CHARSET.search(body, 0, _PRESCAN_BYTES)
        encoding = _python_codec(meta.group(1).decode("ascii")) if meta else None
        if encoding is not None and encoding.startswith("utf-16"):
            # A page that can declare its charset in ASCII bytes is not UTF-16.
            encoding = "utf-8"
    return body.decode(encoding or "utf-8", errors="replace")


@lru_cache(maxsize=64)
def _python_codec(label: str) -> str | None:
    label = label.strip().lower()
    if label in _WINDOWS_1252_LABELS:
        return "cp1252"
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def _title(tree: LexborHTMLParser) -> str:
    for selector in ("title", 'meta[property="og:title"]', "h1"):
        node = tree.css_first(selector)
        if node is None:
            continue
        raw = node.attrs.get("content") if node.tag == "meta" else node.text()
        title = _WHITESPACE.sub(" ", raw or "").strip()
        if title:
            return title
    return ""


def _lang(tree: LexborHTMLParser) -> str | None:
    root = tree.css_first("html")
    declared = root.attrs.get("lang") if root is not None else None
    if not declared:
        meta = tree.css_first('meta[http-equiv="content-language" i]')
        declared = meta.attrs.get("content") if meta is not None else None
    if not declared:
        return None
    tag = declared.split(",")[0].strip()  # a header value may list several
    if not _LANG_TAG.fullmatch(tag):
        return None
    return re.split(r"[-_]", tag, maxsplit=1)[0].lower()


def _same_site_links(tree: LexborHTMLParser, page_url: str) -> tuple[str, ...]:
    page = link_target(page_url)  # spelled as the links will be: lower case, IDNA
    if page is None:
        return ()
    site = registrable_domain(page.host)
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        base = urljoin(page_url, (base_node.attrs.get("href") or "").translate(_URL_NOISE))
    base_parts = urlsplit(base)
    origin = f"{base_parts.scheme}://{base_parts.netloc}"
    # Browsers drop tabs and newlines inside an href and escape spaces.
    hrefs = dict.fromkeys(
        (node.attrs.get("href") or "").strip().translate(_URL_NOISE)
        for node in tree.css("a[href], area[href]")
    )
    links: dict[str, None] = {}  # ordered, without repeats
    for href in hrefs:
        if not href or href.startswith("#"):
            continue
        if href.startswith("/") and not href.startswith("//") and "/." not in href:
            absolute = origin + href  # the common case, without urljoin's cost
        else:
            absolute = urljoin(base, href)
        link = link_target(absolute)
        if link is None:  # mailto:, javascript:, tel:, data: or malformed
            continue
        if registrable_domain(link.host) == site:
            links[link.url] = None
    return tuple(links)


@lru_cache(maxsize=4096)
def registrable_domain(host: str) -> str:
    """The part of `host` a registrant owns (`blog.example.co.uk` → `example.co.uk`),
    from the Public Suffix List; the host itself for IPs, `localhost` and unknown
    suffixes."""
    return get_fld(host, fix_protocol=True, fail_silently=True) or host


PageFunction = Callable[[bytes, str, str], ExtractedPage]
"""What a worker runs on a page: `extract_page`, or a stand-in in tests
(a top-level function, so it pickles by reference)."""

DEFAULT_TIME_LIMIT_S = CrawlSettings().extract_timeout_s
"""Per page, the `[crawl]` table's default."""


class ExtractionTimedOut(TimeoutError):
    """A page's extraction ran past its time limit; its worker was killed and replaced."""


class ExtractionFailed(Exception):
    """A page's extraction raised, or its worker died on it; the next page gets a live worker."""


def default_workers() -> int:
    """One worker per usable core but one, which the event loop keeps."""
    # The CPUs this process may run on, which in a container can be fewer
    # than the machine has.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (usable or 1) - 1)


def start_worker_server() -> multiprocessing.context.BaseContext:
    """Start the forkserver that extraction workers fork from, if it isn't running.

    Call it before anything replaces `sys.stderr` (a full-screen app does):
    starting the server also starts multiprocessing's resource tracker, which
    hands it stderr's file descriptor, and a replaced stderr has none.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    multiprocessing.forkserver.ensure_running()
    return context


class PageExtractor:
    """Runs `extract_page` off the event loop, in a pool of worker processes.

    At most two pages per worker are handed to the pool at a time, so a fast
    fetcher waits here rather than piling pickled pages in the pool's queue.
    A page still extracting `time_limit_s` after a worker took it raises
    `ExtractionTimedOut`; the pool kills that worker and starts another, so
    the next pages go on.  `inline=True` runs extraction in one thread of
    this process instead: quick to start, for tests, but it competes for the
    GIL with the loop, and a thread can't be killed, so it has no time limit.
    `page_function` replaces `extract_page` (tests).  Use as an async context
    manager, or call `close()` when done.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        inline: bool = False,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        page_function: PageFunction = extract_page,
    ) -> None:
        self.workers = 1 if inline else (workers or default_workers())
        self.time_limit_s = time_limit_s
        self._page_function = page_function
        self._threads: ThreadPoolExecutor | None = None
        self._pool: ProcessPool | None = None
        if inline:
            self._threads = ThreadPoolExecutor(1, thread_name_prefix="crawldeck-extract")
        else:
            # forkserver, not fork: forking a process that runs an event loop and
            # other threads can copy a lock mid-use into the child.  Preloading
            # this module makes the server import the parsers once for all workers,
            # and a worker that replaces a killed one starts in milliseconds.
            # (pebble's workers ignore SIGINT: the parent owns shutdown.)
            try:
                self._pool = ProcessPool(self.workers, context=start_worker_server())
            except (OSError, RuntimeError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise ExtractionUnavailable(
                    f"page extraction workers could not start ({type(exc).__name__}: {first})"
                ) from None
        self._slots = asyncio.Semaphore(2 * self.workers)
        self._jobs: set[Future[ExtractedPage]] = set()  # handed to the pool, not yet back
        self._closed = False

    async def extract(self, html: bytes, url: str, content_type: str) -> ExtractedPage:
        """`extract_page(html, url, content_type)`, computed in a worker.

        Raises `ExtractionTimedOut` past the time limit, and `ExtractionFailed`
        when the page function raised or its worker died on the page.
        """
        if self._closed:
            raise RuntimeError("PageExtractor is closed")
        async with self._slots:
            if self._threads is not None:
                loop = asyncio.get_running_loop()
                try:
                    return await loop.run_in_executor(
                        self._threads, self._page_function, html, url, content_type
                    )
                except Exception as exc:
                    raise ExtractionFailed(_one_line(exc)) from exc
            assert self._pool is not None
            job: Future[ExtractedPage] = self._pool.schedule(
                self._page_function, (html, url, content_type), timeout=self.time_limit_s
            )
            self._jobs.add(job)
            try:
                # Cancelling this await cancels the job, and the pool stops its worker.
                return await asyncio.wrap_future(job)
            except TimeoutError:
                raise ExtractionTimedOut(
                    f"extraction ran past {self.time_limit_s:g} s; its worker was replaced"
                ) from None
            except (asyncio.CancelledError, BrokenProcessPool):
                # Closing the pool ends what it held one way or the other: the
                # pool's own threads report a broken pool, or `aclose` cancels it.
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    raise RuntimeError("PageExtractor was closed while extracting") from None
                raise
            except ProcessExpired as died:  # killed, or crashed in the parser's C code
                raise ExtractionFailed(f"its worker died ({died})") from None
            except Exception as exc:  # the parser's own error on this page
                raise ExtractionFailed(_one_line(exc)) from exc
            finally:
                self._jobs.discard(job)

    def _shut_down(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
        if self._pool is not None:
            # stop, not close: pages not yet started are dropped, and a worker
            # still on a page is terminated rather than waited for (killed if it
            # ignores SIGTERM for pebble's 3 s, as C code that never checks might).
            self._pool.stop()
            self._pool.join()

    def _abandon_jobs(self) -> None:
        # A stopped pool never settles what it held: end each waiter with an error.
        for job in list(self._jobs):
            job.cancel()

    def close(self) -> None:
        """Stop the workers, dropping pages not yet done; never waits for a page to finish."""
        self._closed = True
        self._shut_down()
        self._abandon_jobs()

    async def aclose(self) -> None:
        """`close()` without blocking the event loop while workers exit."""
        self._closed = True
        await asyncio.to_thread(self._shut_down)
        self._abandon_jobs()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _one_line(exc: BaseException) -> str:
    """An extraction error for the page's record: its type and the first line of its text."""
    text = str(exc).strip().splitlines()
    detail = f": {text[0][:200]}" if text else ""
    return f"extraction failed ({type(exc).__name__}{detail})"
