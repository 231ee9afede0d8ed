"""A crawl job's fetch stage: sites done, page rate, fetch slots and outcomes."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from engine.api import CrawlSnapshot, Snapshot

# Outcomes that gave the pipeline a page; the rest are the sites' answers
# (robots, timeouts, errors) and are shown in the warning colour.
_GOOD = frozenset({"fetched", "redirected"})
_BAR_WIDTH = 20


class CrawlPanel(Widget):
    """Two lines: progress over the sites, then pages by outcome.  Hidden for document jobs."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "crawl-panel--good",
        "crawl-panel--other",
        "crawl-panel--bar",
        "crawl-panel--bar-empty",
    }

    DEFAULT_CSS = """
    CrawlPanel { height: 2; display: none; }
    CrawlPanel.-crawling { display: block; }
    """

    crawl: reactive[CrawlSnapshot | None] = reactive(None, init=False)

    def show(self, snap: Snapshot) -> None:
        self.crawl = snap.crawl

    def watch_crawl(self, crawl: CrawlSnapshot | None) -> None:
        self.set_class(crawl is not None, "-crawling")

    def render(self) -> Text:
        crawl = self.crawl
        if crawl is None:
            return Text()
        total = crawl.targets_total
        head = Text.assemble(("crawl ", "dim"), ("sites ", "dim"))
        head.append(f"{crawl.targets_finished:,}/{'?' if total is None else f'{total:,}'} ", "bold")
        share = crawl.targets_finished / total if total else 0.0
        filled = round(_BAR_WIDTH * min(1.0, share))
        head.append("━" * filled, self.get_component_rich_style("crawl-panel--bar"))
        head.append(
            "━" * (_BAR_WIDTH - filled), self.get_component_rich_style("crawl-panel--bar-empty")
        )
        head.append(f" {crawl.pages_per_min:,.0f}", "bold")
        head.append(" pages/min  fetch ", "dim")
        head.append(f"{crawl.fetches_in_flight}/{crawl.fetch_concurrency}", "bold")
        head.append(f" ({crawl.per_host}/host)", "dim")
        head.append("  extracting ", "dim")
        head.append(f"{crawl.extracting}", "bold")
        if crawl.resumed:
            head.append("  from store ", "dim")
            head.append(f"{crawl.resumed:,}", "bold")
        outcomes = Text("pages ", style="dim")
        if not crawl.outcomes:
            outcomes.append(" none yet", "dim")
        for name, count in crawl.outcomes:
            style = "crawl-panel--good" if name in _GOOD else "crawl-panel--other"
            outcomes.append(f" {name.replace('_', ' ')} ", "dim")
            outcomes.append(f"{count:,}", self.get_component_rich_style(style))
        lines = Text("\n").join([head, outcomes])
        lines.no_wrap, lines.overflow = True, "ellipsis"
        return lines
