"""The dashboard drives the real engine, and looks the same every time from a fixed snapshot."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.clock import Clock
from textual.pilot import Pilot
from textual.widgets import Static
from textual.widgets._footer import FooterKey  # not exported; textual is pinned exactly

from engine.cluster.cluster_view import WorkerReport
from engine.engine import Engine
from engine.observe.headless_reporter import status_line
from engine.observe.snapshot import JobState
from tests.tui.conftest import (
    FixedSource,
    fixed_batch_snapshot,
    fixed_cluster,
    fixed_cluster_snapshot,
    fixed_crawl_snapshot,
    fixed_snapshot,
    fixed_worker,
)
from tui.actions import ACTIONS
from tui.app import CrawldeckApp
from tui.screens.confirm_quit import ConfirmQuitScreen
from tui.widgets.batch_panel import BatchPanel
from tui.widgets.event_log import EventLog
from tui.widgets.fitting_footer import FittingFooter
from tui.widgets.key_usage_table import KeyUsageTable
from tui.widgets.workers_panel import WorkersPanel

ACTIONS_BY_ACTION = {a.action: a for a in ACTIONS}
WAIT_S = 10.0  # a hang guard; conditions normally hold within a few ticks


async def wait_until(pilot: Pilot[Any], condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.05)


async def start(pilot: Pilot[Any], engine: Engine) -> None:
    await wait_until(pilot, lambda: engine.snapshot().state is JobState.RUNNING)


async def finish(pilot: Pilot[Any], app: CrawldeckApp, engine: Engine) -> None:
    """Stop the engine and let its worker end before the app closes."""
    engine.stop()
    await wait_until(pilot, lambda: not app.engine_running)


class FrozenClock(Clock):
    """Time that never moves: nothing animates in a screenshot."""

    @property
    def time(self) -> float:
        return 0.0


def fixed_app(**changes: object) -> CrawldeckApp:
    return CrawldeckApp(FixedSource(fixed_snapshot(**changes)), refresh_hz=0, clock=FrozenClock())


def fixed_crawl_app(**changes: object) -> CrawldeckApp:
    source = FixedSource(fixed_crawl_snapshot(**changes))
    return CrawldeckApp(source, refresh_hz=0, clock=FrozenClock())


# ---------------------------------------------------------------- the real engine
async def test_space_pauses_and_p_resumes_the_engine(slow_engine: Engine) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)

        await pilot.press("space")
        await pilot.pause()
        assert slow_engine.snapshot().state is JobState.PAUSED
        assert "PAUSED" in str(app.query_one("#job-status").render())

        await pilot.press("p")
        await pilot.pause()
        assert slow_engine.snapshot().state is JobState.RUNNING
        await finish(pilot, app, slow_engine)


def eta_figure(app: CrawldeckApp) -> list[str]:
    """The ETA figure's three lines as drawn: label, value, band."""
    return str(app.query_one("#figure-eta", Static).render()).split("\n")


async def test_the_eta_says_paused_while_paused_and_counts_down_again_on_resume(
    slow_engine: Engine,
) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        await wait_until(pilot, lambda: slow_engine.snapshot().eta_s is not None)
        await wait_until(pilot, lambda: re.fullmatch(r"\d+m?\d*s", eta_figure(app)[1]) is not None)

        await pilot.press("space")
        await pilot.pause()
        snap = slow_engine.snapshot()
        assert snap.state is JobState.PAUSED
        assert (snap.eta_s, snap.eta_low_s, snap.eta_high_s) == (None, None, None)
        assert eta_figure(app) == ["ETA", "paused", ""]
        assert " ETA paused " in status_line(snap)  # the headless line says the same

        await pilot.press("p")
        await wait_until(pilot, lambda: slow_engine.snapshot().eta_s is not None)
        await wait_until(pilot, lambda: re.fullmatch(r"\d+m?\d*s", eta_figure(app)[1]) is not None)
        await finish(pilot, app, slow_engine)


async def test_plus_and_minus_change_the_engine_concurrency(slow_engine: Engine) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        before = slow_engine.snapshot().concurrency

        await pilot.press("plus", "plus")
        await pilot.pause()
        assert slow_engine.snapshot().concurrency == before + 2

        await pilot.press("minus")
        await pilot.pause()
        assert slow_engine.snapshot().concurrency == before + 1
        assert f"/{before + 1}" in str(app.query_one("#job-status").render())
        await finish(pilot, app, slow_engine)


async def test_t_switches_between_conservative_and_aggressive(slow_engine: Engine) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        assert slow_engine.snapshot().preset.name == "aggressive"

        await pilot.press("t")
        await pilot.pause()
        snap = slow_engine.snapshot()
        assert snap.preset.name == "conservative"
        assert snap.concurrency == slow_engine.config.presets["conservative"].concurrency

        await pilot.press("t")
        await pilot.pause()
        assert slow_engine.snapshot().preset.name == "aggressive"
        await finish(pilot, app, slow_engine)


async def test_d_drains_and_the_engine_ends_stopped(slow_engine: Engine) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)

        await pilot.press("d")
        await pilot.pause()
        assert slow_engine.snapshot().state in (JobState.DRAINING, JobState.STOPPED)
        await wait_until(pilot, lambda: not app.engine_running)

        assert slow_engine.snapshot().state is JobState.STOPPED
        assert app.is_running  # draining ends the job, not the dashboard
        # Steering is disabled once the job is over.
        assert app.dashboard.check_action("toggle_pause", ()) is None


async def test_quit_asks_while_running_and_stops_the_engine_on_yes(
    slow_engine: Engine,
) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)

        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuitScreen)
        await pilot.press("n")
        await pilot.pause()
        assert app.screen is app.dashboard
        assert slow_engine.snapshot().state is JobState.RUNNING

        await pilot.press("q")
        await pilot.pause()
        await pilot.press("y")
        await wait_until(pilot, lambda: not app.is_running)

    assert slow_engine.snapshot().state is JobState.STOPPED
    assert app.return_value is JobState.STOPPED


# ---------------------------------------------------------------- a fixed snapshot
async def test_quit_is_immediate_once_the_job_is_over() -> None:
    app = fixed_app(state=JobState.DONE)
    async with app.run_test() as pilot:
        await pilot.press("q")
        await wait_until(pilot, lambda: not app.is_running)
    assert app.return_value is JobState.DONE


async def test_controls_call_the_source_and_the_palette_lists_them() -> None:
    app = fixed_crawl_app()
    source = app.source
    assert isinstance(source, FixedSource)
    async with app.run_test() as pilot:
        await pilot.press("space", "plus", "minus", "t", "right_square_bracket", "[")
        await pilot.pause()
        assert source.calls == [
            ("pause", None),
            ("set_concurrency", 9),
            ("set_concurrency", 7),
            ("apply_preset", "conservative"),
            ("set_fetch_concurrency", 72),
            ("set_fetch_concurrency", 56),
        ]
        titles = [c.title for c in app.get_system_commands(app.dashboard)]
        for action in ACTIONS:
            if action.action != "request_quit":
                assert action.description in titles
        bound = {b.id for _, b in app.dashboard._bindings}
        assert {a.id for a in ACTIONS} <= bound


async def test_widgets_show_the_snapshot_values() -> None:
    app = fixed_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        table = app.query_one(KeyUsageTable)
        assert table.row_count == 3
        assert table.get_row("openai/main")[2] == "sk-…a1b2"
        # TPM: what the provider counts against the limit, then what answers used
        assert table.get_row("openai/main")[4:6] == ["196,500/200,000", "182,000"]
        assert table.get_row("openai/backup")[8] == "cooling 4s"
        log = app.query_one(EventLog)
        assert len(log.lines) == 6
        assert "+12:33" in log.lines[-1].text


def test_dashboard_at_80x24(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 24))


def test_dashboard_at_160x48(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(), terminal_size=(160, 48))


def fixed_batch_app() -> CrawldeckApp:
    return CrawldeckApp(FixedSource(fixed_batch_snapshot()), refresh_hz=0, clock=FrozenClock())


async def test_the_batch_panel_shows_open_batches_and_the_cost_only_for_batch_jobs() -> None:
    async with fixed_app().run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        assert not pilot.app.query_one(BatchPanel).display
    async with fixed_batch_app().run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        panel = pilot.app.query_one(BatchPanel)
        assert panel.display
        lines = str(panel.render()).splitlines()
        assert "open 4" in lines[0] and "given up 1" in lines[0]
        assert "projected $0.1310 (online $0.2620)" in lines[0]
        # Oldest first, two of them, then a count of the rest.
        assert lines[1].split()[:2] == ["in", "progress"]
        assert "31/50 requests (1 failed)  1h24m of 24h00m  batch_69a1c0ffee00" in lines[1]
        assert lines[1].endswith("resumed")
        assert lines[3].strip() == "… 2 more open"


async def test_the_batch_panel_counts_the_chunks_sent_online_once_some_were() -> None:
    snap = fixed_batch_snapshot()
    assert snap.batch is not None
    cut = replace(snap, batch=replace(snap.batch, chunks_sent_online=250))
    app = CrawldeckApp(FixedSource(cut), refresh_hz=0, clock=FrozenClock())
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        head = str(pilot.app.query_one(BatchPanel).render()).splitlines()[0]
        assert "sent online 250 chunks" in head


def test_batch_dashboard_at_80x24(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_batch_app(), terminal_size=(80, 24))


def test_batch_dashboard_at_160x48(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_batch_app(), terminal_size=(160, 48))


def words(line: str) -> str:
    """A drawn line with its column padding squeezed to single spaces."""
    return " ".join(line.split())


async def test_the_workers_panel_lists_every_worker_of_a_shared_job_and_hides_without_one() -> None:
    source = FixedSource(fixed_cluster_snapshot())
    app = CrawldeckApp(source, refresh_hz=0, clock=FrozenClock())
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        panel = app.query_one(WorkersPanel)
        assert panel.display
        drawn = panel.render()
        lines = str(drawn).splitlines()
        assert lines[0].startswith("workers 2 live  1 lost  chunks 4,934/12,000")
        assert "done 4,920  failed 14  in flight 61  dead letters 1" in lines[0]
        assert lines[0].endswith("803 items/min  201 req/min")  # the live workers' rates
        assert words(lines[1]) == "worker host:pid state done failed in flight req/min heartbeat"
        # The lost worker comes first; in flight and rate are stale there, so not shown.
        assert words(lines[2]) == "c0ffee spare-3:880 LOST 506 3 – – 47s ago"
        lost_at = str(drawn).index("LOST")
        lost_style = panel.get_component_rich_style("workers-panel--lost")
        assert any(
            span.start <= lost_at < span.end and span.style == lost_style for span in drawn.spans
        )
        assert (
            words(lines[3]) == "9f3c1e gpu-box-a:4242 running 2,310 6 32 104 0s ago this, collector"
        )
        assert words(lines[4]) == "07ab55 gpu-box-b:1717 running 2,104 5 29 97 2s ago"
        assert len(lines) == 5

        source.snap = fixed_snapshot()  # the same dashboard, now fed a job that is not shared
        app.dashboard.pull()
        await pilot.pause()
        assert not panel.display


async def test_an_ended_worker_is_listed_last_and_dimmed_with_no_stale_figures() -> None:
    cluster = fixed_cluster(
        fixed_worker("box-a-11-aaaaaa", WorkerReport("done", 900, 2), age_s=30.0, ended=True),
        fixed_worker("box-b-22-bbbbbb", WorkerReport("running", 700, 1, 16, 0, 88.0), age_s=0.2),
    )
    app = CrawldeckApp(
        FixedSource(fixed_snapshot(cluster=cluster)), refresh_hz=0, clock=FrozenClock()
    )
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        panel = app.query_one(WorkersPanel)
        drawn = panel.render()
        lines = str(drawn).splitlines()
        assert lines[0].startswith("workers 1 live  0 lost  1 ended")
        assert words(lines[2]).startswith("bbbbbb box-b:22 running 700 1 16 88")
        assert words(lines[3]) == "aaaaaa box-a:11 done 900 2 – – 30s ago this, collector"
        ended_style = panel.get_component_rich_style("workers-panel--ended")
        ended_from = str(drawn).index("aaaaaa")
        assert any(
            span.start <= ended_from and span.end == len(drawn) and span.style == ended_style
            for span in drawn.spans
        )


async def workers_totals_line(**cluster_changes: int) -> str:
    """The workers panel's first line for the fixed cluster with `cluster_changes`."""
    snap = fixed_cluster_snapshot()
    assert snap.cluster is not None
    cluster = replace(snap.cluster, **cluster_changes)
    app = CrawldeckApp(
        FixedSource(replace(snap, cluster=cluster)), refresh_hz=0, clock=FrozenClock()
    )
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        return str(app.query_one(WorkersPanel).render()).splitlines()[0]


async def test_the_workers_panel_counts_a_shared_crawls_sites_across_workers() -> None:
    first = await workers_totals_line(sites_enqueued=400, sites_crawled=118, sites_dead=2)
    assert "in flight 61  sites 120/400  dead letters 1" in first


async def test_the_workers_panel_shows_the_copies_among_the_done_when_there_are_any() -> None:
    first = await workers_totals_line(chunks_copied=310)
    assert "done 4,920  copied 310  failed 14  in flight 61" in first


def test_cluster_dashboard_at_160x48(snap_compare: Callable[..., bool]) -> None:
    app = CrawldeckApp(FixedSource(fixed_cluster_snapshot()), refresh_hz=0, clock=FrozenClock())
    assert snap_compare(app, terminal_size=(160, 48))


def test_crawl_dashboard_at_80x24(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_crawl_app(), terminal_size=(80, 24))


def test_crawl_dashboard_at_160x48(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_crawl_app(), terminal_size=(160, 48))


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (160, 48)])
async def test_every_control_is_in_the_footer_whole_or_the_footer_says_where(
    size: tuple[int, int],
) -> None:
    app = fixed_crawl_app()  # a crawl job: the most controls
    async with app.run_test(size=size) as pilot:
        footer = app.query_one(FittingFooter)
        await wait_until(pilot, lambda: footer.fitted and bool(footer.query(".-command-palette")))
        palette = footer.query_one(".-command-palette", FooterKey)
        assert palette.display and palette.region in footer.region
        shown = [key for key in footer.query(FooterKey) if key is not palette and key.display]
        shown = [key for key in shown if all(node.display for node in key.ancestors_with_self)]
        assert all(key.region.right <= palette.region.x for key in shown), "none cut in half"

        listed = {a.action for a in ACTIONS if a.show}
        assert {key.action for key in shown} | set(footer.left_out) == listed
        titles = {c.title for c in app.get_system_commands(app.dashboard)}
        for action in footer.left_out:
            assert ACTIONS_BY_ACTION[action].description in titles, f"{action} is in the palette"
        assert palette.description == ("more" if footer.left_out else "palette")
        if size[0] == 80:
            assert footer.left_out, "80 columns cannot hold every control"
            assert "request_quit" not in footer.left_out


async def test_fetch_controls_are_hidden_for_a_job_that_does_not_crawl() -> None:
    app = fixed_app()
    source = app.source
    assert isinstance(source, FixedSource)
    async with app.run_test() as pilot:
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert source.calls == []
        titles = [c.title for c in app.get_system_commands(app.dashboard)]
        assert "Fetch+" not in titles and "Pause" in titles


def test_the_theme_uses_theme_variables_not_hex_colours() -> None:
    from tui.app import THEME_PATH

    css = Path(THEME_PATH).read_text(encoding="utf-8")
    assert not re.findall(r"#(?:[0-9a-fA-F]{8}|[0-9a-fA-F]{6}|[0-9a-fA-F]{3,4})\b", css)
    assert "$primary" in css  # not vacuous: the colours come from the theme


async def test_input_records_skipped_show_beside_the_failed_count() -> None:
    counts = replace(fixed_snapshot().counts, records_skipped=5)
    app = fixed_app(counts=counts)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        shown = str(app.query_one("#figure-progress").render())
        assert "12 failed · 5 bad input" in shown


async def test_chunks_answered_from_the_same_text_show_as_cached() -> None:
    counts = replace(fixed_snapshot().counts, cached=1_204)
    app = fixed_app(counts=counts)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        shown = str(app.query_one("#figure-progress").render())
        assert "12 failed · 1,204 cached" in shown


async def test_a_snapshot_poll_after_the_last_screen_closed_draws_nothing() -> None:
    app = fixed_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
    assert app.screen_stack == []  # the app has closed every screen

    app.refresh_snapshot()  # the poll's timer may fire once more while the app closes
