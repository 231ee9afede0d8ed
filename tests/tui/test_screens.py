"""The keys, results and event-log views open from the dashboard and close with escape."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from engine.store.sqlite_store import FailureRow, ResultRow, Store
from tests.tui.conftest import FixedSource, fixed_snapshot
from tests.tui.test_dashboard import FrozenClock, wait_until
from tui.app import CrawldeckApp
from tui.engine_source import store_path_of
from tui.screens.event_log import EventLogScreen
from tui.screens.keys import KEY_FIELDS, KeysScreen
from tui.screens.results import ResultsScreen, StoredRowScreen
from tui.widgets.event_log import EventLog

CREATED_AT = 1_700_000_500.0


def make_store(path: Path) -> Path:
    """A tiny real store: three results and one failure, at fixed times."""

    async def write() -> None:
        store = await Store.open(path)
        texts = (
            ("c-001", "The quarterly call opened with revenue guidance.", '{"topic": "revenue"}'),
            ("c-002", "Margins narrowed on freight costs.", '{"topic": "margins"}'),
            ("c-003", "Questions turned to the new warehouse.", '{"topic": "capex"}'),
        )
        for seq, (chunk_id, text, result) in enumerate(texts):
            await store.put_result(
                ResultRow(
                    chunk_id, "v1", "gpt-x", "call.txt", seq, text, result,
                    "openai", "main", 120, 30, 850.0, 0.0012, 1,
                )
            )  # fmt: skip
        await store.put_failure(
            FailureRow(
                "c-004", "v1", "gpt-x", "call.txt", 3, "Closing remarks.",
                "insufficient_quota after 5 attempts", 5, 1,
            )
        )  # fmt: skip
        await store.close()

    asyncio.run(write())
    conn = sqlite3.connect(path)
    with conn:
        for table in ("results", "failures"):
            conn.execute(f"UPDATE {table} SET created_at = ? + seq", (CREATED_AT,))
    conn.close()
    return path


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return make_store(tmp_path / "results.sqlite")


def app_with(store: Path | None = None, **changes: object) -> CrawldeckApp:
    snap = fixed_snapshot(errors_by_key=(("openai/main", 3), ("local/sim", 12)), **changes)
    return CrawldeckApp(FixedSource(snap), refresh_hz=0, clock=FrozenClock(), store_path=store)


async def searched(pilot: Pilot[Any]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


# ---------------------------------------------------------------- opening and closing
@pytest.mark.parametrize(
    ("key", "screen_type"),
    [("k", KeysScreen), ("l", EventLogScreen), ("r", ResultsScreen)],
)
async def test_a_key_opens_its_view_and_escape_closes_it(
    key: str, screen_type: type, store_path: Path
) -> None:
    app = app_with(store_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press(key)
        await searched(pilot)
        assert isinstance(app.screen, screen_type)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.dashboard


async def test_keys_view_shows_every_key_field_and_errors_by_key() -> None:
    app = app_with()
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("k")
        await pilot.pause()
        table = app.screen.query_one("#key-fields", DataTable)
        assert table.row_count == len(KEY_FIELDS)
        assert table.get_row("disabled_reason")[3] == "insufficient_quota"
        assert table.get_row("cooldown_s")[2] == "4"
        errors = app.screen.query_one("#key-errors", DataTable)
        assert errors.get_row("local/sim") == ["local/sim", "12"]


async def test_event_log_view_shows_all_events_and_follows_new_ones() -> None:
    app = app_with()
    source = app.source
    assert isinstance(source, FixedSource)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("l")
        await pilot.pause()
        log = app.screen.query_one(EventLog)
        assert len(log.lines) == 6
        extra = replace(source.snap.events[-1], message="one more")
        source.snap = replace(source.snap, events=(*source.snap.events, extra))
        app.refresh_snapshot()
        await pilot.pause()
        assert len(log.lines) == 7


async def test_hidden_dashboard_is_not_redrawn() -> None:
    app = app_with()
    async with app.run_test(size=(100, 30)) as pilot:
        shown: list[object] = []
        app.dashboard.show = shown.append  # type: ignore[method-assign,assignment]
        await pilot.press("k")
        await pilot.pause()
        app.refresh_snapshot()
        assert shown == []
        await pilot.press("escape")
        await pilot.pause()
        assert len(shown) == 1  # caught up once it was on top again


# ---------------------------------------------------------------- results browser
async def test_results_search_finds_a_stored_row_and_enter_opens_it(store_path: Path) -> None:
    app = app_with(store_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        await searched(pilot)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 4
        assert table.get_row_at(0)[1] == "c-004"  # newest first

        app.screen.query_one(Input).value = "freight"
        await searched(pilot)
        assert table.row_count == 1
        assert table.get_row_at(0)[1] == "c-002"

        await pilot.press("enter")  # from the search box to the table
        await pilot.press("enter")  # open the row
        await pilot.pause()
        assert isinstance(app.screen, StoredRowScreen)
        detail = str(app.screen.query_one("#row-detail-text", Static).render())
        assert '"topic": "margins"' in detail
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ResultsScreen)


async def test_results_search_covers_failure_reasons_and_like_wildcards(store_path: Path) -> None:
    app = app_with(store_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        await searched(pilot)
        screen = app.screen
        assert isinstance(screen, ResultsScreen)
        screen.query_one(Input).value = "insufficient_quota"
        await searched(pilot)
        assert [r.chunk_id for r in screen.rows] == ["c-004"]
        screen.query_one(Input).value = "100%"  # % is literal, not a wildcard
        await searched(pilot)
        assert screen.rows == []


async def test_results_view_without_a_store_says_so() -> None:
    app = app_with(None)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        await pilot.pause()
        status = str(app.screen.query_one("#results-status", Static).render())
        assert "No store" in status


def test_the_store_path_comes_from_the_source_or_the_engine_config(tmp_path: Path) -> None:
    assert store_path_of(FixedSource(fixed_snapshot())) is None
    assert store_path_of(SimpleNamespace(store_path=tmp_path / "a.db")) == tmp_path / "a.db"
    engine_like = SimpleNamespace(config=SimpleNamespace(job=SimpleNamespace(store="b.db")))
    assert store_path_of(engine_like) == Path("b.db")


# ---------------------------------------------------------------- screenshots
SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])


def _opening(*keys: str) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press(*keys)
        await pilot.pause()

    return run_before


@SIZES
def test_keys_view(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_with(), terminal_size=size, run_before=_opening("k"))


@SIZES
def test_event_log_view(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_with(), terminal_size=size, run_before=_opening("l"))


@SIZES
def test_quit_confirmation(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_with(), terminal_size=size, run_before=_opening("q"))


@SIZES
def test_results_view(
    snap_compare: Callable[..., bool], tmp_path: Path, size: tuple[int, int]
) -> None:
    store = make_store(tmp_path / "results.sqlite")

    async def open_results(pilot: Pilot[Any]) -> None:
        await pilot.press("r")
        await searched(pilot)
        pilot.app.screen.query_one(Input).cursor_blink = False
        await wait_until(pilot, lambda: pilot.app.screen.query_one(DataTable).row_count == 4)

    assert snap_compare(app_with(store), terminal_size=size, run_before=open_results)


@SIZES
def test_one_stored_row(
    snap_compare: Callable[..., bool], tmp_path: Path, size: tuple[int, int]
) -> None:
    store = make_store(tmp_path / "results.sqlite")

    async def open_row(pilot: Pilot[Any]) -> None:
        await pilot.press("r")
        await searched(pilot)
        pilot.app.screen.query_one(Input).cursor_blink = False
        await wait_until(pilot, lambda: pilot.app.screen.query_one(DataTable).row_count == 4)
        pilot.app.screen.query_one(DataTable).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(pilot.app.screen, StoredRowScreen)

    assert snap_compare(app_with(store), terminal_size=size, run_before=open_row)
