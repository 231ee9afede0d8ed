"""A footer that never cuts a control in half, and says where the ones that don't fit are.

Textual's footer lets keys run off the right edge, so at 80 columns a label
ends mid-word (`k Ke`) and the keys past it are simply gone.  This one shows
the controls that fit whole, left to right in the registry's order, and ends
with the command palette's key, relabelled `more` when anything gave way:
every control is in the palette.

What fits is measured, not guessed: after its keys change or the footer's
width does, every key is shown, the screen lays them out, and the first
layout after that hides the ones past the palette key.  So remapped keys,
crawl-only controls and themes need no arithmetic here.
"""

from __future__ import annotations

from textual import events
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import (  # not exported; textual is pinned exactly
    FooterKey,
    FooterLabel,
    KeyGroup,
)

PALETTE_LABEL = "palette"
MORE_LABEL = "more"  # the palette key's label while some controls are left out


class FittingFooter(Footer):
    """The footer's keys, as many as fit whole, then `^p more` for the rest."""

    DEFAULT_CSS = """
    /* A group's label ("+- Conc") keeps a space from the key after it. */
    FittingFooter.-compact FooterLabel { margin: 0 1 0 0; }
    FittingFooter.-compact KeyGroup.-compact { padding-left: 0; }
    """

    def __init__(self) -> None:
        super().__init__(show_command_palette=True)
        self.left_out: tuple[str, ...] = ()
        """The actions whose keys did not fit, as of the last fitting."""
        self._fit_pending = True
        self._recomposing = False
        self._width = 0

    @property
    def fitted(self) -> bool:
        """True once the keys shown were measured against the footer's width."""
        return not (self._fit_pending or self._recomposing)

    def on_mount(self) -> None:
        super().on_mount()
        self.screen.screen_layout_refresh_signal.subscribe(self, self._fit_after_layout)

    def on_unmount(self) -> None:
        self.screen.screen_layout_refresh_signal.unsubscribe(self)
        super().on_unmount()

    async def recompose(self) -> None:
        # Layouts while the keys are swapped see only some of them: fit once all are in.
        self._recomposing = True
        try:
            await super().recompose()
        finally:
            self._recomposing = False
        self._show_every_key()

    def on_resize(self, event: events.Resize) -> None:
        # Hiding keys changes the footer's virtual size, which also sends a resize.
        if event.size.width != self._width:
            self._width = event.size.width
            self._show_every_key()

    def watch_compact(self) -> None:
        self._show_every_key()

    def _show_every_key(self) -> None:
        for child in self.children:
            child.display = True
        self._fit_pending = True
        self.refresh(layout=True)

    def _fit_after_layout(self, screen: Screen[object]) -> None:
        if self.fitted or not self.is_attached or not self.children:
            return  # nothing to do, or no keys yet: the first bindings recompose the footer
        palettes = [c for c in self.children if c.has_class("-command-palette")]
        palette = palettes[0] if palettes and isinstance(palettes[0], FooterKey) else None
        controls = [c for c in self.children if c is not palette and c.display]
        if any(not c.region for c in controls) or (palette is not None and not palette.region):
            return  # not laid out yet: the next layout fits them
        self._fit_pending = False
        edge = palette.region.x if palette is not None else self.region.right
        first_out = next((i for i, c in enumerate(controls) if c.region.right > edge), None)
        # A group's keys and its label go together: "+-" alone says nothing.
        if (
            first_out
            and isinstance(controls[first_out], FooterLabel)
            and isinstance(controls[first_out - 1], KeyGroup)
        ):
            first_out -= 1
        left_out = controls[first_out:] if first_out is not None else []
        for child in left_out:
            child.display = False
        self.left_out = tuple(action for child in left_out for action in _actions(child))
        if palette is not None:
            label = MORE_LABEL if left_out else PALETTE_LABEL
            if palette.description != label:
                palette.description = label
                palette.refresh(layout=True)


def _actions(widget: Widget) -> list[str]:
    if isinstance(widget, FooterKey):
        return [widget.action]
    return [key.action for key in widget.query(FooterKey)]
