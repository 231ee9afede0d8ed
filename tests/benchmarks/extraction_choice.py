"""Which HTML-to-text method to use for crawled pages, measured side by side.

    python -m tests.benchmarks.extraction_choice [--pages N] [--seed S] [--no-pool]

Generates N article pages (300 by default) with `tests.benchmarks.article_pages`:
generated, not real, but built from the markup real CMSes serve — WordPress
posts (Jetpack share and related posts inside the content, server-rendered
comment threads on some), newspaper articles (consent banner, mega-menu, ad
slots, "Read more" links, embedded tweets, comments that load by script),
news sites rendered by a JavaScript framework (hashed class names), Ghost
posts and bare pages; see that module for why no real pages are kept.  The
article's own text is known, so each method's output is scored against it
by token-level F1 (bag of lower-cased words), overall and per layout.
Generated pages are tidier than real ones, so every method scores higher
here than on real pages: the figures compare methods, they do not predict
the F1 of a real crawl.

Every page goes through every method in turn (the order rotates per page, so
no method always runs on a cold cache) and each run's CPU time is taken
with `time.process_time`.  Printed per method: median and p90 CPU ms per
page, mean and 10th-percentile F1, and both as a ratio to trafilatura fast.
`extract_page` is timed too: it is what the crawler runs (decoding, the
lexbor parse for title/links, and trafilatura), and its text is compared
with trafilatura fast's byte for byte.

Unless `--no-pool`, the pages then go through `PageExtractor` twice — its
process pool and its inline thread — printing pages/s, the CPU the event
loop's own process spends per page (what extraction costs the engine), and
how late a 5 ms timer fires meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trafilatura
from selectolax.lexbor import LexborHTMLParser

from engine.crawl.extraction import PageExtractor, extract_page
from tests.benchmarks.article_pages import LAYOUTS, ArticlePages, Page

BUDGET_MS = 5.0
# A method this close to the best F1, and this much cheaper, is worth its small loss.
F1_TOLERANCE = 0.01
CHEAPER = 0.75
F1_SAME = 0.001  # closer than this, two methods score the same: the cheaper one is the pick


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


def print_by_layout(pages: Sequence[Page], figures: dict[str, MethodFigures]) -> None:
    """Mean F1 of each method on each kind of site."""
    present = [layout for layout in LAYOUTS if any(page.layout == layout for page in pages)]
    print(f"{'mean F1 by layout':<30} " + " ".join(f"{layout:>9}" for layout in present))
    for fig in figures.values():
        means = [
            statistics.fmean(f1 for f1, page in zip(fig.f1, pages, strict=True) if page.layout == k)
            for k in present
        ]
        print(f"{fig.name:<30} " + " ".join(f"{mean:9.3f}" for mean in means))


def recommendation(figures: dict[str, MethodFigures]) -> str:
    """The best mean F1 (the cheapest of equals), unless a method nearly as good is much cheaper.

    No absolute CPU budget takes part: these pages are larger than the crawl
    benchmark's, the machine is shared, and a hard line would flip the pick
    on noise.  The crawl's own budget is checked by `crawl_at_rate_limit`.
    """
    methods = [f for name, f in figures.items() if name != "extract_page (all)"]
    best = max(f.mean_f1 for f in methods)
    pick = min((f for f in methods if f.mean_f1 >= best - F1_SAME), key=lambda f: f.median_ms)
    cheaper = [
        f
        for f in methods
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

    builder = ArticlePages(args.seed)
    pages = [builder.page(i) for i in range(args.pages)]
    mean_kb = statistics.fmean(len(p.html) for p in pages) / 1024
    layouts = Counter(page.layout for page in pages)
    print(
        f"{len(pages)} generated pages ({', '.join(f'{n} {k}' for k, n in layouts.items())}), "
        f"mean {mean_kb:.0f} KiB of HTML, seed {args.seed}"
    )

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
    print_by_layout(pages, figures)
    same = sum(crawldeck_extract_page(page) == trafilatura_fast(page) for page in pages)
    print(f"extract_page's text is trafilatura fast's, byte for byte, on {same} of {len(pages)}")
    whole = figures["extract_page (all)"]
    verdict = "within" if whole.median_ms <= BUDGET_MS else "over"
    print(
        f"extract_page median {whole.median_ms:.2f} ms/page on these pages: {verdict} the "
        f"{BUDGET_MS:g} ms fetch + extraction budget that crawl_at_rate_limit checks on its own"
    )
    print(recommendation(figures))
    if not args.no_pool:
        asyncio.run(pool_figures(pages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
