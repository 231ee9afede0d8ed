"""Resident memory against the engine's soft and hard limits."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from engine.api import MemorySnapshot, Snapshot

_MB = 2**20


class MemoryGauge(Widget):
    """A bar of RSS up to the hard limit, with the soft limit marked.

    Component classes colour the filled part by the guard's state.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "memory-gauge--ok",
        "memory-gauge--soft",
        "memory-gauge--hard",
        "memory-gauge--empty",
        "memory-gauge--mark",
    }

    DEFAULT_CSS = """
    MemoryGauge { height: 1; }
    """

    memory: reactive[MemorySnapshot] = reactive(MemorySnapshot, init=False)

    def show(self, snap: Snapshot) -> None:
        self.memory = snap.memory

    def render(self) -> Text:
        mem = self.memory
        state = mem.state if mem.state in ("soft", "hard") else "ok"
        head = Text.assemble(("memory ", "dim"), (f"{mem.rss_bytes / _MB:,.0f} MB ", "bold"))
        tail = Text.assemble(
            (" soft ", "dim"),
            f"{mem.soft_bytes / _MB:,.0f}",
            (" hard ", "dim"),
            f"{mem.hard_bytes / _MB:,.0f} MB ",
            (mem.state.upper(), "bold"),
        )
        width = max(0, self.size.width - head.cell_len - tail.cell_len)
        bar = Text()
        scale = max(mem.hard_bytes, mem.rss_bytes, 1)
        filled = min(width, round(width * mem.rss_bytes / scale))
        soft_at = round(width * mem.soft_bytes / scale) if mem.soft_bytes else -1
        fill_style = self.get_component_rich_style(f"memory-gauge--{state}")
        empty_style = self.get_component_rich_style("memory-gauge--empty")
        mark_style = self.get_component_rich_style("memory-gauge--mark")
        for cell in range(width):
            if cell == soft_at and cell >= filled:
                bar.append("┃", mark_style)
            elif cell < filled:
                bar.append("━", fill_style)
            else:
                bar.append("━", empty_style)
        return Text.assemble(head, bar, tail, no_wrap=True, overflow="ellipsis")
