"""Which HTML-to-text method to use for crawled pages, measured side by side.

    python -m tests.benchmarks.extraction_choice [--pages N] [--seed S] [--no-pool]

Generates N synthetic article pages (300 by default) the way real sites
are built — head full of meta tags, inline scripts and styles, a header with
navigation, a cookie banner, breadcrumbs, the article, ads and share
buttons inside it, an author box, a sidebar of teasers, a comment thread,
related-article teasers, a newsletter box and a footer — in four layouts
(semantic HTML5, WordPress-like div soup, a news portal, a bare page).  The
article's own text is known, so each method's output is scored against it
by token-level F1 (bag of lower-cased words).

Every page goes through every method in turn (the order rotates per page, so
no method always runs on a cold cache) and each run's CPU time is taken
with `time.process_time`.  Printed per method: median and p90 CPU ms per
page, mean and 10th-percentile F1, and both as a ratio to trafilatura fast.
`extract_page` is timed too: it is what the crawler runs (decoding, the
lexbor parse for title/links, and trafilatura), against a 5 ms budget.

Unless `--no-pool`, the pages then go through `PageExtractor` twice — its
process pool and its inline thread — printing pages/s, the CPU the event
loop's own process spends per page (what extraction costs the engine), and
how late a 5 ms timer fires meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

import trafilatura
from selectolax.lexbor import LexborHTMLParser

from engine.crawl.extraction import PageExtractor, extract_page

BUDGET_MS = 5.0
# A method this close to the best F1, and this much cheaper, is worth its small loss.
F1_TOLERANCE = 0.01
CHEAPER = 0.75

# Paragraphs of words read better than 200-item literals.
WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which
but have an they you were her she there been one all we their has would when if so no what
can more about out up them some could into only other time new year people first after also
two may these over most like any state use way work between well should world through each
system because while very where how great being made those both last same under public many
market energy water city data report study team plan model policy group research company
result change growth price support service value board program health school local review
level court council project record network budget impact design process power account order
action travel season product energy island river garden museum harbour bridge railway winter
summer autumn spring festival library hospital student teacher farmer engineer doctor writer
results analysts officials residents scientists engineers investors voters readers visitors
said says told found showed reported announced expected raised reduced built opened closed
launched tested measured published approved rejected delayed extended improved increased
quickly slowly recently nearly largely mainly partly roughly sharply steadily widely openly
local national regional global digital annual monthly weekly public private early late major
minor central northern southern eastern western coastal rural urban modern historic rapid
""".split()  # noqa: SIM905

NAV_WORDS = """
Home News World Business Technology Science Health Sport Culture Travel Opinion
Video Podcasts Weather Subscribe Login Search Contact About Careers Archive Events Shop
""".split()  # noqa: SIM905

BOILERPLATE_LINES = (
    "We use cookies to improve your experience and to show you relevant content.",
    "By continuing to browse the site you agree to our use of cookies.",
    "Sign up for our newsletter and get the latest stories in your inbox every week.",
    "Share this article on social media",
    "Advertisement",
    "All rights reserved.",
    "Terms of use · Privacy policy · Cookie settings · Accessibility",
    "Follow us on social networks for daily updates from our team.",
    "Most read stories this week",
    "You might also like",
)


@dataclass(frozen=True, slots=True)
class Page:
    """A generated page and the text a perfect extractor would return."""

    html: bytes
    url: str
    main_text: str


# --------------------------------------------------------------- page builder
class PageBuilder:
    """Generates varied article pages from one seeded random source."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def sentence(self, low: int = 8, high: int = 24) -> str:
        words = self.rng.choices(WORDS, k=self.rng.randint(low, high))
        return words[0].capitalize() + " " + " ".join(words[1:]) + self.rng.choice(".....?!")

    def paragraph(self, low: int = 2, high: int = 6) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(low, high)))

    def title(self) -> str:
        return " ".join(w.capitalize() for w in self.rng.choices(WORDS, k=self.rng.randint(4, 9)))

    def page(self, index: int) -> Page:
        layout = self.rng.choice(("semantic", "divsoup", "portal", "bare"))
        url = f"https://www.site{index % 37}.example.com/{layout}/{index}-story"
        headline = self.title()
        body_html, body_texts = self.article_body()
        main_text = "\n".join([headline, *body_texts])
        html = getattr(self, f"layout_{layout}")(headline, body_html, url)
        return Page(html=html.encode("utf-8"), url=url, main_text=main_text)

    def article_body(self) -> tuple[str, list[str]]:
        """The article's HTML (with in-article ads and share bars) and its own texts."""
        parts: list[str] = []
        texts: list[str] = []
        for block in range(self.rng.randint(5, 22)):
            kind = self.rng.choices(("p", "h2", "ul", "quote", "table"), (70, 10, 8, 6, 3))[0]
            if kind == "p":
                text = self.paragraph()
                parts.append(f"<p>{escape(text)}</p>")
                texts.append(text)
            elif kind == "h2":
                text = self.title()
                parts.append(f"<h2>{escape(text)}</h2>")
                texts.append(text)
            elif kind == "ul":
                items = [self.sentence(4, 12) for _ in range(self.rng.randint(3, 6))]
                parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")
                texts.extend(items)
            elif kind == "quote":
                text = self.sentence(12, 30)
                parts.append(f"<blockquote><p>{escape(text)}</p></blockquote>")
                texts.append(text)
            else:
                rows = [
                    [self.rng.choice(WORDS), str(self.rng.randint(1, 9999))]
                    for _ in range(self.rng.randint(3, 7))
                ]
                cells = "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in rows)
                parts.append(f"<table><tbody>{cells}</tbody></table>")
                texts.extend(f"{a} {b}" for a, b in rows)
            if block in (2, 8) and self.rng.random() < 0.6:
                parts.append(self.inline_ad())
        if self.rng.random() < 0.7:
            parts.insert(0, self.share_bar())
        return "\n".join(parts), texts

    def inline_ad(self) -> str:
        return (
            '<div class="ad-slot ad-inline" data-ad-unit="mid-article">'
            '<span class="ad-label">Advertisement</span>'
            f'<a href="https://ads.adnet.example/click?id={self.rng.randint(1, 10**6)}">'
            f"{escape(self.sentence(5, 10))}</a></div>"
        )

    def share_bar(self) -> str:
        nets = ("Facebook", "X", "LinkedIn", "Email", "WhatsApp")
        links = "".join(f'<li><a href="#share-{n.lower()}">Share on {n}</a></li>' for n in nets)
        return f'<div class="share-bar"><ul class="share">{links}</ul></div>'

    def head(self, headline: str, url: str) -> str:
        script = "\n".join(
            f"window.dataLayer=window.dataLayer||[];dataLayer.push({{'event':'e{i}',"
            f"'value':{self.rng.random():.6f},'path':'{url}'}});"
            for i in range(self.rng.randint(40, 300))
        )
        style = "\n".join(
            f".c{i}{{margin:{i % 7}px;padding:{i % 5}px;color:#{i * 2654435761 % 0xFFFFFF:06x}}}"
            for i in range(self.rng.randint(100, 600))
        )
        metas = "".join(
            f'<meta name="m{i}" content="{escape(self.sentence(4, 8))}">' for i in range(12)
        )
        return (
            '<head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(headline)} | Example News</title>"
            f'<meta property="og:title" content="{escape(headline)}">'
            f'<link rel="canonical" href="{url}">{metas}'
            f"<style>{style}</style><script>{script}</script>"
            '<script type="application/ld+json">{"@type":"NewsArticle","headline":'
            f'"{escape(headline)}"}}</script></head>'
        )

    def nav(self) -> str:
        """A mega-menu: each section opens a list of its subsections."""
        items = []
        for word in self.rng.sample(NAV_WORDS, self.rng.randint(8, len(NAV_WORDS))):
            subs = "".join(
                f'<li><a href="/{word.lower()}/{sub}/">{sub.capitalize()}</a></li>'
                for sub in self.rng.sample(WORDS, self.rng.randint(2, 8))
            )
            items.append(
                f'<li class="menu-item has-children"><a href="/{word.lower()}/">{word}</a>'
                f'<ul class="sub-menu">{subs}</ul></li>'
            )
        return f'<ul class="menu nav-menu">{"".join(items)}</ul>'

    def cookie_banner(self) -> str:
        return (
            '<div id="cookie-consent" class="cookie-banner" role="dialog">'
            f"<p>{BOILERPLATE_LINES[0]} {BOILERPLATE_LINES[1]}</p>"
            '<button class="accept">Accept all</button><button>Manage settings</button></div>'
        )

    def breadcrumbs(self) -> str:
        crumbs = self.rng.sample(NAV_WORDS, 3)
        links = " › ".join(f'<a href="/{c.lower()}/">{c}</a>' for c in crumbs)
        return f'<nav class="breadcrumbs" aria-label="Breadcrumb">{links}</nav>'

    def teasers(self, count: int, css: str) -> str:
        """Other stories' headlines and first sentences: text much like an article's."""
        items = []
        for _ in range(count):
            slug = "-".join(self.rng.choices(WORDS, k=4))
            items.append(
                f'<div class="{css}-item"><h3><a href="/story/{slug}">{escape(self.title())}'
                f'</a></h3><p class="teaser">{escape(self.sentence(10, 20))}</p></div>'
            )
        return "".join(items)

    def comments(self) -> str:
        items = []
        for n in range(self.rng.choice((0, 0, 3, 8, 15, 25))):
            user = self.rng.choice(WORDS) + str(self.rng.randint(1, 999))
            items.append(
                f'<li class="comment" id="comment-{n}"><div class="comment-author">{user}</div>'
                f'<div class="comment-body"><p>{escape(self.paragraph(1, 3))}</p></div>'
                '<a class="reply" href="#respond">Reply</a></li>'
            )
        if not items:
            return ""
        return (
            '<section id="comments" class="comments-area"><h2 class="comments-title">'
            f'{len(items)} comments</h2><ol class="comment-list">{"".join(items)}</ol>'
            '<div id="respond"><h3>Leave a reply</h3><form><textarea></textarea>'
            "<button>Post comment</button></form></div></section>"
        )

    def author_box(self) -> str:
        return (
            '<div class="author-bio"><img src="/a.jpg" alt=""><p class="bio">'
            f"{escape(self.sentence(10, 18))}</p></div>"
        )

    def newsletter(self) -> str:
        return (
            f'<div class="newsletter-signup"><p>{BOILERPLATE_LINES[2]}</p>'
            '<form><input type="email" placeholder="Email"><button>Sign up</button></form></div>'
        )

    def footer_links(self) -> str:
        links = "".join(
            f'<li><a href="/{w.lower()}">{w}</a></li>'
            for w in self.rng.sample(NAV_WORDS, self.rng.randint(10, 20))
        )
        return (
            f'<ul class="footer-links">{links}</ul><p class="legal">{BOILERPLATE_LINES[6]}</p>'
            f'<p class="copyright">© 2024 Example Media Group. {BOILERPLATE_LINES[5]}</p>'
        )

    def byline(self) -> str:
        return (
            f'<div class="byline">By <a rel="author" href="/authors/{self.rng.choice(WORDS)}">'
            f"{self.rng.choice(WORDS).capitalize()} {self.rng.choice(WORDS).capitalize()}</a>"
            f' · <time datetime="2024-03-{self.rng.randint(10, 28)}">'
            f"March {self.rng.randint(10, 28)}, 2024</time></div>"
        )

    def layout_semantic(self, headline: str, body: str, url: str) -> str:
        return (
            f'<!DOCTYPE html><html lang="en">{self.head(headline, url)}<body class="single">'
            f'{self.cookie_banner()}<header class="site-header"><a class="logo" href="/">'
            f"Example News</a><nav>{self.nav()}</nav></header>{self.breadcrumbs()}"
            f'<main id="main"><article class="post"><header><h1 class="entry-title">'
            f"{escape(headline)}</h1>{self.byline()}</header>"
            f'<div class="entry-content">{body}</div>'
            f'<footer class="entry-footer">{self.author_box()}</footer></article>'
            f"{self.comments()}</main>"
            f'<aside class="sidebar"><h2>{BOILERPLATE_LINES[8]}</h2>'
            f"{self.teasers(self.rng.randint(4, 10), 'popular')}{self.newsletter()}</aside>"
            f'<footer class="site-footer">{self.footer_links()}</footer></body></html>'
        )

    def layout_divsoup(self, headline: str, body: str, url: str) -> str:
        return (
            f"<html>{self.head(headline, url)}<body>"
            f'<div id="wrapper"><div id="top-bar">{self.cookie_banner()}</div>'
            f'<div id="header"><div class="logo"><a href="/">Example Blog</a></div>'
            f'<div class="menu-wrap">{self.nav()}</div></div>'
            f'<div id="container"><div id="content" class="content-area">'
            f'<div class="post hentry"><div class="post-title"><h1>{escape(headline)}</h1>'
            f"</div>{self.byline()}"
            f'<div class="post-body entry">{body}</div>'
            f'<div class="post-tags">Tags: {", ".join(self.rng.sample(WORDS, 5))}</div>'
            f"{self.author_box()}</div>"
            f'<div class="related-posts"><h3>{BOILERPLATE_LINES[9]}</h3>'
            f"{self.teasers(self.rng.randint(3, 6), 'related')}</div>{self.comments()}</div>"
            f'<div id="sidebar" class="widget-area">'
            f'<div class="widget">{self.teasers(self.rng.randint(5, 12), "widget")}</div>'
            f'<div class="widget">{self.newsletter()}</div></div></div>'
            f'<div id="footer">{self.footer_links()}</div></div></body></html>'
        )

    def layout_portal(self, headline: str, body: str, url: str) -> str:
        ads = "".join(self.inline_ad() for _ in range(self.rng.randint(2, 5)))
        return (
            f'<!DOCTYPE html><html lang="en-GB">{self.head(headline, url)}<body>'
            f"{self.cookie_banner()}<div class='topnav'>{self.nav()}</div>"
            f'<div class="ticker">{self.teasers(6, "ticker")}</div>{self.breadcrumbs()}'
            f'<div class="layout"><div class="col-main"><div class="story">'
            f'<h1 itemprop="headline">{escape(headline)}</h1>{self.byline()}'
            f'<div class="story-body" itemprop="articleBody">{body}</div></div>'
            f'<div class="more-stories"><h2>{BOILERPLATE_LINES[8]}</h2>'
            f"{self.teasers(self.rng.randint(6, 14), 'more')}</div>{self.comments()}</div>"
            f'<div class="col-right">{ads}{self.teasers(self.rng.randint(4, 8), "trending")}'
            f"</div></div>{self.newsletter()}"
            f'<div class="footer">{self.footer_links()}{self.footer_links()}</div></body></html>'
        )

    def layout_bare(self, headline: str, body: str, url: str) -> str:
        return (
            f"<html><head><title>{escape(headline)}</title></head><body>"
            f'<p><a href="/">Home</a> | <a href="/archive/">Archive</a></p><hr>'
            f"<h1>{escape(headline)}</h1>{body}<hr>"
            f'<p class="footer">{BOILERPLATE_LINES[5]}</p></body></html>'
        )


# --------------------------------------------------------------------- scoring
def tokens(text: str) -> Counter[str]:
    return Counter("".join(c if c.isalnum() else " " for c in text.lower()).split())


def token_f1(found: str, truth: str) -> float:
    """Harmonic mean of precision and recall over word counts."""
    got, want = tokens(found), tokens(truth)
    common = sum((got & want).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------- methods
def trafilatura_fast(page: Page) -> str:
    return trafilatura.extract(page.html, fast=True, include_comments=False) or ""


def trafilatura_fast_no_tables(page: Page) -> str:
    return (
        trafilatura.extract(page.html, fast=True, include_comments=False, include_tables=False)
        or ""
    )


def trafilatura_default(page: Page) -> str:
    return trafilatura.extract(page.html) or ""


def trafilatura_full_no_comments(page: Page) -> str:
    return trafilatura.extract(page.html, include_comments=False) or ""


def selectolax_body(page: Page) -> str:
    tree = LexborHTMLParser(page.html)
    for node in tree.css("script, style, noscript, template"):
        node.decompose()
    return tree.body.text(separator="\n") if tree.body is not None else ""


def crawldeck_extract_page(page: Page) -> str:
    return extract_page(page.html, page.url, "text/html; charset=utf-8").text


def justext_method() -> Callable[[Page], str] | None:
    try:
        import justext  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    stoplist = justext.get_stoplist("English")

    def run(page: Page) -> str:
        paragraphs = justext.justext(page.html, stoplist)
        return "\n".join(p.text for p in paragraphs if not p.is_boilerplate)

    return run


@dataclass(frozen=True, slots=True)
class MethodFigures:
    name: str
    cpu_ms: list[float]
    f1: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.cpu_ms)

    @property
    def p90_ms(self) -> float:
        return statistics.quantiles(self.cpu_ms, n=10)[-1]

    @property
    def mean_f1(self) -> float:
        return statistics.fmean(self.f1)

    @property
    def p10_f1(self) -> float:
        return statistics.quantiles(self.f1, n=10)[0]


def measure(
    pages: Sequence[Page], methods: dict[str, Callable[[Page], str]]
) -> dict[str, MethodFigures]:
    names = list(methods)
    for page in pages[:5]:  # warm caches and lazy imports, untimed
        for name in names:
            methods[name](page)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    f1: dict[str, list[float]] = {name: [] for name in names}
    for i, page in enumerate(pages):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            start = time.process_time()
            text = methods[name](page)
            cpu[name].append((time.process_time() - start) * 1000)
            f1[name].append(token_f1(text, page.main_text))
    return {name: MethodFigures(name, cpu[name], f1[name]) for name in names}


def recommendation(figures: dict[str, MethodFigures]) -> str:
    """The best mean F1 within the CPU budget, unless a method nearly as good is much cheaper."""
    methods = [f for name, f in figures.items() if name != "extract_page (all)"]
    affordable = [f for f in methods if f.median_ms <= BUDGET_MS] or methods
    pick = max(affordable, key=lambda f: f.mean_f1)
    cheaper = [
        f
        for f in affordable
        if f.mean_f1 >= pick.mean_f1 - F1_TOLERANCE and f.median_ms <= CHEAPER * pick.median_ms
    ]
    if cheaper:
        pick = min(cheaper, key=lambda f: f.median_ms)
    cheapest = min((f for f in methods if f is not pick), key=lambda f: f.median_ms)
    best_other = max((f for f in methods if f is not pick), key=lambda f: f.mean_f1)
    return (
        f"recommendation: {pick.name} (F1 {pick.mean_f1:.3f}, {pick.median_ms:.2f} ms/page); "
        f"next best {best_other.name} F1 {best_other.mean_f1:.3f} at "
        f"{best_other.median_ms / pick.median_ms:.2f}× the CPU; cheapest {cheapest.name} "
        f"{pick.median_ms / cheapest.median_ms:.0f}× cheaper but F1 {cheapest.mean_f1:.3f}"
    )


# ---------------------------------------------------------------- pool vs loop
@dataclass(frozen=True, slots=True)
class PoolFigures:
    pages_per_s: float
    parent_cpu_ms: float  # per page, in the event loop's process (all its threads)
    lag_p99_ms: float  # how late a 5 ms timer fires while pages are extracted
    lag_max_ms: float


async def extraction_run(extractor: PageExtractor, pages: Sequence[Page]) -> PoolFigures:
    """Every page through `extractor` at once, with a 5 ms timer probing the loop."""
    await extractor.extract(pages[0].html, pages[0].url, "text/html")  # workers up and warm
    done = asyncio.Event()
    lags: list[float] = []

    async def ticker() -> None:
        # The engine's loop mostly waits on timers and sockets; a timer's
        # lateness is how long the loop could not run.
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append((time.perf_counter() - start - 0.005) * 1000)

    async with asyncio.TaskGroup() as group:
        group.create_task(ticker())
        wall, cpu = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as work:
            for page in pages:
                work.create_task(extractor.extract(page.html, page.url, "text/html"))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        done.set()
    lags.sort()
    return PoolFigures(
        pages_per_s=len(pages) / wall,
        parent_cpu_ms=cpu / len(pages) * 1000,
        lag_p99_ms=lags[int(len(lags) * 0.99)],
        lag_max_ms=lags[-1],
    )


async def pool_figures(pages: Sequence[Page]) -> None:
    async with PageExtractor() as pool:
        runs = {f"process pool ({pool.workers} worker)": await extraction_run(pool, pages)}
    async with PageExtractor(inline=True) as inline:
        runs["inline thread"] = await extraction_run(inline, pages)
    print(
        f"{'PageExtractor':<26} {'pages/s':>7} {'loop CPU ms/page':>16} {'5 ms timer late by':>19}"
    )
    for name, fig in runs.items():
        print(
            f"{name:<26} {fig.pages_per_s:7.0f} {fig.parent_cpu_ms:16.2f} "
            f"   p99 {fig.lag_p99_ms:4.1f}, max {fig.lag_max_ms:4.1f} ms"
        )


# ------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--no-pool", action="store_true", help="skip the event-loop test")
    args = parser.parse_args()

    builder = PageBuilder(args.seed)
    pages = [builder.page(i) for i in range(args.pages)]
    mean_kb = statistics.fmean(len(p.html) for p in pages) / 1024
    print(f"{len(pages)} pages, mean {mean_kb:.0f} KiB of HTML, seed {args.seed}")

    methods: dict[str, Callable[[Page], str]] = {
        "trafilatura fast": trafilatura_fast,
        "trafilatura fast, no tables": trafilatura_fast_no_tables,
        "trafilatura default": trafilatura_default,
        "trafilatura full, no comments": trafilatura_full_no_comments,
        "selectolax body text": selectolax_body,
    }
    justext_run = justext_method()
    if justext_run is not None:
        methods["justext"] = justext_run
    methods["extract_page (all)"] = crawldeck_extract_page
    figures = measure(pages, methods)

    base = figures["trafilatura fast"]
    print(
        f"{'method':<30} {'median ms':>9} {'p90 ms':>7} {'× CPU':>6} "
        f"{'mean F1':>8} {'p10 F1':>7} {'× F1':>6}"
    )
    for fig in figures.values():
        print(
            f"{fig.name:<30} {fig.median_ms:9.2f} {fig.p90_ms:7.2f} "
            f"{fig.median_ms / base.median_ms:6.2f} {fig.mean_f1:8.3f} {fig.p10_f1:7.3f} "
            f"{fig.mean_f1 / base.mean_f1:6.2f}"
        )
    whole = figures["extract_page (all)"]
    verdict = "within" if whole.median_ms <= BUDGET_MS else "OVER"
    print(
        f"extract_page median {whole.median_ms:.2f} ms/page: {verdict} the {BUDGET_MS:g} ms "
        "fetch + extraction budget (fetch CPU not included)"
    )
    print(recommendation(figures))
    if not args.no_pool:
        asyncio.run(pool_figures(pages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
