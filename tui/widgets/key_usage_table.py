"""Per-key usage: requests and tokens against their limits, in flight, 429s, state.

TPM is what the provider counts against the limit (its rate-limit headers,
else prompt and expected output charged at admission), so near the limit
means the key is full; beside it, the tokens the answers used.
"""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import DataTable

from engine.api import KeySnapshot, Snapshot

COLUMNS = ("provider", "alias", "key", "RPM", "TPM", "TPM used", "in flight", "429s", "state")
Row = tuple[str, ...]


def _used_of(used: int, limit: float | None) -> str:
    return f"{used:,}/{'?' if limit is None else f'{limit:,.0f}'}"


def key_row(key: KeySnapshot) -> Row:
    state = key.state
    if key.state == "cooling" and key.cooldown_s:
        state = f"cooling {key.cooldown_s:.0f}s"
    elif key.state == "disabled" and key.disabled_reason:
        state = f"disabled: {key.disabled_reason}"
    return (
        key.provider,
        key.alias,
        key.masked_secret,
        _used_of(key.rpm_used, key.rpm_limit),
        _used_of(key.tpm_counted, key.tpm_limit),
        f"{key.tpm_used:,}",
        str(key.in_flight),
        str(key.rate_limited),
        state,
    )


class KeyUsageTable(DataTable[str]):
    """One row per API key; only changed cells are rewritten."""

    DEFAULT_CSS = """
    KeyUsageTable { height: auto; max-height: 8; }
    """

    rows_by_key: reactive[tuple[tuple[str, Row], ...]] = reactive((), init=False)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            id=id, classes=classes, cursor_type="none", zebra_stripes=True, show_cursor=False
        )

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.add_column(column, key=column)

    def show(self, snap: Snapshot) -> None:
        self.rows_by_key = tuple((key.key_id, key_row(key)) for key in snap.keys)

    def watch_rows_by_key(
        self, old: tuple[tuple[str, Row], ...], new: tuple[tuple[str, Row], ...]
    ) -> None:
        if [k for k, _ in old] != [k for k, _ in new] or self.row_count != len(old):
            self.clear()
            for key_id, row in new:
                self.add_row(*row, key=key_id)
            return
        for (key_id, before), (_, after) in zip(old, new, strict=True):
            for column, was, now in zip(COLUMNS, before, after, strict=True):
                if was != now:
                    # Widen when a value outgrows its column (e.g. a learned
                    # limit); only changed cells of a few keys, so it stays cheap.
                    self.update_cell(key_id, column, now, update_width=True)
