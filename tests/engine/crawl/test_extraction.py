"""Turning fetched pages into main text, title, language and same-site links."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import threading
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import psutil
import pytest

from engine.crawl.extraction import (
    EMPTY_PAGE,
    ExtractedPage,
    ExtractionFailed,
    ExtractionTimedOut,
    PageExtractor,
    decode_page,
    extract_page,
)

ARTICLE = [
    "The harbour council approved the new tidal barrier after three years of public review.",
    "Engineers expect the barrier to protect four thousand homes from winter storm surges, "
    "and the first gates will be tested in the spring before the full system opens.",
    "Residents who spoke at the final meeting said the plan balanced cost against the "
    "growing risk of flooding along the northern shore of the estuary.",
    "The regional budget sets aside money for maintenance over the next twenty years, "
    "with an annual report on the condition of the gates published by the council.",
]
NAV = "Weather Sport Culture Subscribe Login"
SIDEBAR = "Most read: celebrity chef opens seventh restaurant in the capital"
COMMENT = "First! Totally agree with everything the mayor ever says about anything"
FOOTER = "Copyright 2024 Example Media Group. All rights reserved. Privacy policy"


def article_page(lang: str = "en-GB", charset: str = "utf-8") -> str:
    paragraphs = "".join(f"<p>{text}</p>" for text in ARTICLE)
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="{charset}">
<title>  Tidal barrier
  approved | Example News</title>
<script>window.tracking = {{"page": "article"}};</script><style>p {{ margin: 0 }}</style>
</head><body>
<header><nav><ul>{"".join(f'<li><a href="/{w.lower()}/">{w}</a></li>' for w in NAV.split())}</ul>
</nav></header>
<main><article><h1>Tidal barrier approved</h1>{paragraphs}</article>
<section id="comments" class="comments"><ol><li class="comment"><p>{COMMENT}</p></li></ol>
</section></main>
<aside class="sidebar"><h2>Popular</h2><p><a href="/popular/1">{SIDEBAR}</a></p></aside>
<footer class="site-footer"><p>{FOOTER}</p></footer>
</body></html>"""


def links_page(body: str, head: str = "") -> bytes:
    return f"<html><head>{head}</head><body>{body}</body></html>".encode()


# --- main text ------------------------------------------------------------------------


def test_the_main_article_is_kept_and_the_boilerplate_dropped() -> None:
    page = extract_page(article_page().encode(), "https://news.example.com/a/1", "text/html")

    for paragraph in ARTICLE:
        assert paragraph in page.text
    for boilerplate in (NAV, "Weather", SIDEBAR, COMMENT, FOOTER, "window.tracking"):
        assert boilerplate not in page.text
    assert page.n_chars == len(page.text)


def test_title_and_language_come_from_the_head() -> None:
    page = extract_page(article_page(lang="en-GB").encode(), "https://example.com/", "text/html")

    assert page.title == "Tidal barrier approved | Example News"
    assert page.lang == "en"


def test_without_a_title_the_heading_is_the_title_and_no_lang_is_none() -> None:
    html = b"<html><body><h1>Only a heading</h1><p>Some words.</p></body></html>"

    page = extract_page(html, "https://example.com/", "text/html")

    assert page.title == "Only a heading"
    assert page.lang is None


@pytest.mark.parametrize(
    "html",
    [b"", b"   \n", b"<html><head></head><body></body></html>", b"<html><body><nav></nav>"],
)
def test_an_empty_page_gives_empty_text(html: bytes) -> None:
    page = extract_page(html, "https://example.com/", "text/html; charset=utf-8")

    assert page.text == ""
    assert page.n_chars == 0


def test_plain_text_passes_through() -> None:
    body = "  Line one.\nLine two, café.\n".encode()

    page = extract_page(body, "https://example.com/notes.txt", "text/plain; charset=utf-8")

    assert page == ExtractedPage(
        title="", text="Line one.\nLine two, café.", links=(), lang=None, n_chars=25
    )


@pytest.mark.parametrize("content_type", ["image/png", "application/pdf", "application/json"])
def test_types_that_are_not_text_give_an_empty_page(content_type: str) -> None:
    assert extract_page(b"%PDF-1.7 binary", "https://example.com/f", content_type) == EMPTY_PAGE


def test_a_missing_content_type_is_read_as_html() -> None:
    page = extract_page(article_page().encode(), "https://example.com/", "")

    assert ARTICLE[0] in page.text


# --- charsets ---------------------------------------------------------------------------


def test_a_latin_1_page_is_decoded_by_its_content_type() -> None:
    html = article_page(charset="utf-8").replace("public review", "révision publique")
    body = html.encode("latin-1")  # the meta tag is wrong; the header wins

    page = extract_page(body, "https://example.fr/", "text/html; charset=ISO-8859-1")

    assert "révision publique" in page.text


def test_the_meta_charset_is_used_when_the_header_has_none() -> None:
    html = article_page(charset="windows-1251").replace("public review", "обзор")

    page = extract_page(html.encode("cp1251"), "https://example.ru/", "text/html")

    assert "обзор" in page.text


def test_latin_1_labels_are_read_as_windows_1252_as_browsers_do() -> None:
    body = "“quoted” — café".encode("cp1252")

    assert decode_page(body, "text/html; charset=iso-8859-1") == "“quoted” — café"


def test_undeclared_bytes_are_utf_8_with_replacement() -> None:
    assert decode_page(b"ok \xff\xfe caf\xc3\xa9", "text/html") == "ok \ufffd\ufffd café"
    assert decode_page(b"caf\xc3\xa9", "text/html; charset=no-such-codec") == "café"


def test_a_byte_order_mark_wins_over_the_header() -> None:
    body = "\ufeffcafé".encode("utf-16-le")

    assert decode_page(body, "text/html; charset=iso-8859-1") == "café"


# --- links --------------------------------------------------------------------------------


def test_links_are_absolute_same_site_without_fragments_or_repeats() -> None:
    body = """
        <a href="/news/">News</a>
        <a href="story.html#comments">Story</a>
        <a href="../up.html">Up</a>
        <a href="https://blog.example.co.uk/post">Our blog</a>
        <a href="https://other.co.uk/">Another registrant under co.uk</a>
        <a href="https://elsewhere.org/">Elsewhere</a>
        <a href="//cdn.example.co.uk/asset">Scheme-relative</a>
        <a href="mailto:desk@example.co.uk">Mail</a>
        <a href="javascript:void(0)">Script</a>
        <a href="tel:+441234">Phone</a>
        <a href="#top">Top</a>
        <a href="/news/">News again</a>
        <a href="/files/annual report.pdf">Spaces</a>
        <a>No href</a>
    """

    page = extract_page(links_page(body), "https://www.example.co.uk/world/today", "text/html")

    assert page.links == (
        "https://www.example.co.uk/news/",
        "https://www.example.co.uk/world/story.html",
        "https://www.example.co.uk/up.html",
        "https://blog.example.co.uk/post",
        "https://cdn.example.co.uk/asset",
        "https://www.example.co.uk/files/annual%20report.pdf",
    )


def test_links_resolve_against_the_base_element() -> None:
    page = extract_page(
        links_page('<a href="page.html">P</a><a href="/root">R</a>', '<base href="/docs/v2/">'),
        "https://example.com/index.html",
        "text/html",
    )

    assert page.links == ("https://example.com/docs/v2/page.html", "https://example.com/root")


def test_a_page_on_an_ip_address_keeps_links_to_that_address_only() -> None:
    body = '<a href="/a">A</a><a href="http://127.0.0.2:8000/b">B</a>'

    page = extract_page(links_page(body), "http://127.0.0.1:8000/", "text/html")

    assert page.links == ("http://127.0.0.1:8000/a",)


# --- running off the event loop ---------------------------------------------------------------


def test_the_function_and_its_result_pickle_for_worker_processes() -> None:
    page = extract_page(article_page().encode(), "https://example.com/", "text/html")

    assert pickle.loads(pickle.dumps(extract_page)) is extract_page
    assert pickle.loads(pickle.dumps(page)) == page


def live_extraction_workers() -> list[psutil.Process]:
    """Every live extraction worker: with forkserver they are children of the
    server, which is our child."""
    return [
        worker
        for server in psutil.Process().children()
        if "forkserver" in " ".join(server.cmdline())
        for worker in server.children()
        if worker.status() != psutil.STATUS_ZOMBIE
    ]


_OLDER: set[int] = set()  # workers alive when the current test began


@pytest.fixture(autouse=True)
def _workers_of_this_test_only() -> None:
    # The forkserver serves the whole session: a worker another test's pool has not
    # yet seen exit is not one of this test's extractor.
    _OLDER.clear()
    _OLDER.update(worker.pid for worker in live_extraction_workers())


def extraction_workers() -> list[psutil.Process]:
    """The live extraction workers started since this test began: its extractor's."""
    return [worker for worker in live_extraction_workers() if worker.pid not in _OLDER]


async def test_the_process_pool_extracts_in_workers_passes_errors_back_and_stops() -> None:
    html = article_page().encode()
    expected = extract_page(html, "https://example.com/a", "text/html")

    async with PageExtractor(workers=1) as extractor:
        pages = await asyncio.gather(
            *(extractor.extract(html, "https://example.com/a", "text/html") for _ in range(6))
        )
        workers = extraction_workers()
        assert len(workers) == 1
        with pytest.raises(ExtractionFailed, match=r"\(TypeError: ") as failed:
            # A str where bytes belong: the worker's error comes back as the page's failure.
            await extractor.extract("<p>x</p>", "https://example.com/", "text/html")  # type: ignore[arg-type]
        assert isinstance(failed.value.__cause__, TypeError)

    assert pages == [expected] * 6
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


async def test_inline_mode_runs_in_a_thread_with_the_same_results() -> None:
    html = article_page().encode()

    async with PageExtractor(inline=True) as extractor:
        page = await extractor.extract(html, "https://example.com/", "text/html")

    assert page == extract_page(html, "https://example.com/", "text/html")


async def test_a_closed_extractor_refuses_work() -> None:
    extractor = PageExtractor(inline=True)
    await extractor.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await extractor.extract(b"<p>x</p>", "https://example.com/", "text/html")


# --- pages whose extraction never ends ----------------------------------------------------------


def extract_unless_told_to_hang(html: bytes, url: str, content_type: str) -> ExtractedPage:
    """`extract_page`, except for a page at `/hang`: that one calls the page's
    host and port (so the test knows a worker has it), then never returns, as
    trafilatura doesn't on some pathological pages."""
    parts = urlsplit(url)
    if parts.path != "/hang":
        return extract_page(html, url, content_type)
    with socket.create_connection((parts.hostname, parts.port)) as line:
        line.recv(1)  # the test never answers
    threading.Event().wait()
    raise AssertionError("unreachable")


class HangLine:
    """A loopback listener that `extract_unless_told_to_hang` calls from its worker."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        self.url = ""

    async def _accept(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.calls.put(writer)  # held open: the worker waits on it


@pytest.fixture
async def hang_line() -> AsyncIterator[HangLine]:
    line = HangLine()
    server = await asyncio.start_server(line._accept, "127.0.0.1", 0)
    line.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hang"
    async with server:
        yield line
        while not line.calls.empty():
            line.calls.get_nowait().close()


def test_the_test_page_function_pickles_for_worker_processes() -> None:
    assert pickle.loads(pickle.dumps(extract_unless_told_to_hang)) is extract_unless_told_to_hang


async def test_a_page_past_the_time_limit_fails_and_its_worker_is_replaced(
    hang_line: HangLine,
) -> None:
    html = article_page().encode()
    limit = 1.0

    async with PageExtractor(
        workers=1, time_limit_s=limit, page_function=extract_unless_told_to_hang
    ) as extractor:
        await extractor.extract(html, "https://example.com/a", "text/html")  # the worker is up
        (stuck,) = extraction_workers()

        started = time.monotonic()
        with pytest.raises(ExtractionTimedOut, match="ran past 1 s; its worker was replaced"):
            await extractor.extract(html, hang_line.url, "text/html")
        waited = time.monotonic() - started

        # The clock starts when a worker takes the page; the pool checks it every
        # 0.1 s, and a loaded machine may take a moment to end the worker.
        assert limit <= waited < limit + 2.0
        assert hang_line.calls.qsize() == 1  # the page really was in a worker
        _, alive = psutil.wait_procs([stuck], timeout=5)
        assert alive == []
        # The next page extracts in the worker that replaced it.
        page = await extractor.extract(html, "https://example.com/a", "text/html")
        assert page == extract_page(html, "https://example.com/a", "text/html")
        (replacement,) = extraction_workers()
        assert replacement.pid != stuck.pid


async def test_closing_never_waits_for_a_page_that_never_ends(hang_line: HangLine) -> None:
    extractor = PageExtractor(
        workers=1, time_limit_s=600, page_function=extract_unless_told_to_hang
    )
    hung = asyncio.create_task(extractor.extract(b"<p>x</p>", hang_line.url, "text/html"))
    await hang_line.calls.get()  # a worker is on the page, and will be for ten minutes
    (stuck,) = extraction_workers()

    started = time.monotonic()
    await extractor.aclose()
    closing = time.monotonic() - started

    assert closing < 2.0
    with pytest.raises(RuntimeError, match="closed while extracting"):
        await hung
    _, alive = psutil.wait_procs([stuck], timeout=5)
    assert alive == []


def extract_unless_told_to_fail(html: bytes, url: str, content_type: str) -> ExtractedPage:
    """`extract_page`, except at `/raise` (the parser raises, as a real one may on a
    malformed page) and at `/die` (the worker process dies, as on a crash in C code)."""
    path = urlsplit(url).path
    if path == "/raise":
        raise ValueError("the parser choked\nand said more on a second line")
    if path == "/die":
        os._exit(13)
    return extract_page(html, url, content_type)


async def test_a_page_the_parser_raises_on_fails_alone() -> None:
    html = article_page().encode()
    async with PageExtractor(workers=1, page_function=extract_unless_told_to_fail) as extractor:
        with pytest.raises(
            ExtractionFailed, match=r"^extraction failed \(ValueError: the parser choked\)$"
        ):
            await extractor.extract(html, "https://example.com/raise", "text/html")

        page = await extractor.extract(html, "https://example.com/a", "text/html")
        assert page == extract_page(html, "https://example.com/a", "text/html")


async def test_a_page_whose_worker_dies_fails_alone_and_the_worker_is_replaced() -> None:
    html = article_page().encode()
    async with PageExtractor(workers=1, page_function=extract_unless_told_to_fail) as extractor:
        await extractor.extract(html, "https://example.com/a", "text/html")  # the worker is up
        (dying,) = extraction_workers()

        with pytest.raises(ExtractionFailed, match=r"^its worker died"):
            await extractor.extract(html, "https://example.com/die", "text/html")

        page = await extractor.extract(html, "https://example.com/a", "text/html")
        assert page == extract_page(html, "https://example.com/a", "text/html")
        (replacement,) = extraction_workers()
        assert replacement.pid != dying.pid
