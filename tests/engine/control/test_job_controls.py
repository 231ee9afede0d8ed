"""One control surface: `JobControls`, and its relative steps end to end.

Every implementation (the engine, a job seen through its control socket, the
dashboard tests' fixed source) is held to the protocol's own signatures.  A
step moves from the value in force, stops at the bound and says so, both on
the engine itself and over the control socket; the absolute set that older
viewers send keeps working beside it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.cluster.cluster_job_controls import ClusterJobControls
from engine.config.setting_bounds import CONCURRENCY, FETCH_CONCURRENCY
from engine.control.client import ControlClient, ControlError
from engine.control.controls import Adjustment, JobControls, RunnableJob
from engine.engine import Engine
from engine.observe.events import EventKind
from engine.observe.snapshot import JobState
from engine.simulation.site_server import SiteServer
from tests.engine.conftest import job_config, write_records
from tests.engine.control.test_control_socket import RunningJob, running_job, until
from tests.engine.crawl.test_crawl_job import crawl_engine, sites
from tests.tui.conftest import FixedSource, fixed_crawl_snapshot, fixed_snapshot
from tui.remote_source import RemoteSource

__all__ = ["running_job", "sites"]  # fixtures, used by name below

PROTOCOL_MEMBERS = (
    "snapshot",
    "set_concurrency",
    "adjust_concurrency",
    "set_fetch_concurrency",
    "adjust_fetch_concurrency",
    "apply_preset",
    "pause",
    "resume",
    "drain",
    "stop",
)


def idle_engine(tmp_path: Path, concurrency: int = 4) -> Engine:
    """An engine that is never run: its controls work on the settings in force."""
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 5), "http://127.0.0.1:9/v1"
    )
    engine = Engine(config, secrets)
    engine.set_concurrency(concurrency)
    return engine


def parameters(function: Callable[..., object]) -> list[tuple[str, object]]:
    """A method's parameters after `self`: names and kinds, what a caller depends on."""
    signature = inspect.signature(function)
    return [(p.name, p.kind) for p in signature.parameters.values() if p.name != "self"]


# ---------------------------------------------------------------- the protocol
def test_the_protocol_is_the_whole_control_surface() -> None:
    declared = {
        name
        for name, member in vars(JobControls).items()
        if callable(member) and not name.startswith("_")
    }
    assert declared == set(PROTOCOL_MEMBERS)


@pytest.mark.parametrize("implementation", [Engine, RemoteSource, FixedSource, ClusterJobControls])
def test_every_implementation_takes_the_protocols_arguments(implementation: type) -> None:
    for name in PROTOCOL_MEMBERS:
        ours = getattr(implementation, name)
        assert parameters(ours) == parameters(getattr(JobControls, name)), (
            f"{implementation.__name__}.{name}"
        )


async def test_each_source_is_job_controls_and_only_the_engine_can_be_run(
    tmp_path: Path,
) -> None:
    engine = idle_engine(tmp_path)
    remote = RemoteSource(tmp_path / "control.sock")
    fixed = FixedSource(fixed_snapshot())
    # Checked twice: here at run time, and by mypy, which reads these annotations.
    sources: list[JobControls] = [engine, remote, fixed]
    runnable: RunnableJob = engine

    assert all(isinstance(source, JobControls) for source in sources)
    assert isinstance(runnable, RunnableJob)
    assert not isinstance(remote, RunnableJob)
    assert not isinstance(fixed, RunnableJob)


# ---------------------------------------------------------------- a step's arithmetic
def test_a_step_within_the_bound_goes_all_the_way() -> None:
    step = Adjustment.within(CONCURRENCY, "concurrency", 8, +1)

    assert step == Adjustment("concurrency", old=8, new=9, asked=9)
    assert (step.changed, step.at_bound, step.bound_message) == (True, False, "")


def test_a_step_past_the_bound_stops_there_and_says_so() -> None:
    up = Adjustment.within(FETCH_CONCURRENCY, "fetch concurrency", FETCH_CONCURRENCY.high - 3, +8)
    down = Adjustment.within(CONCURRENCY, "concurrency", 1, -1)

    assert (up.new, up.changed, up.at_bound) == (FETCH_CONCURRENCY.high, True, True)
    assert up.bound_message == f"{FETCH_CONCURRENCY.high} is the most"
    assert (down.new, down.changed, down.at_bound) == (1, False, True)
    assert down.bound_message == "1 is the least"


# ---------------------------------------------------------------- the engine
async def test_the_engine_steps_from_the_value_in_force(tmp_path: Path) -> None:
    engine = idle_engine(tmp_path, concurrency=4)

    step = engine.adjust_concurrency(+3)

    assert step == Adjustment("concurrency", old=4, new=7, asked=7)
    assert engine.snapshot().concurrency == 7
    assert engine.snapshot().preset.concurrency == 7  # saved with the preset, as a set is
    assert engine.snapshot().events[-1].message == "concurrency 4 → 7"


async def test_at_the_bound_the_engine_changes_nothing_and_logs_nothing(tmp_path: Path) -> None:
    engine = idle_engine(tmp_path, concurrency=CONCURRENCY.high)
    events_before = engine.snapshot().events

    step = engine.adjust_concurrency(+1)

    assert (step.new, step.at_bound) == (CONCURRENCY.high, True)
    assert engine.snapshot().concurrency == CONCURRENCY.high
    assert engine.snapshot().events == events_before


async def test_a_document_job_refuses_a_fetch_step(tmp_path: Path) -> None:
    engine = idle_engine(tmp_path)

    with pytest.raises(ValueError, match="does not crawl"):
        engine.adjust_fetch_concurrency(+8)


async def test_a_crawl_jobs_fetch_step_moves_its_fetch_stage_only(
    tmp_path: Path, simulator: Callable[..., object], sites: SiteServer
) -> None:
    engine, _ = await crawl_engine(tmp_path, simulator, sites, concurrency=3)
    llm_before = engine.snapshot().concurrency
    run = asyncio.create_task(engine.run())
    await until(lambda: engine.snapshot().crawl is not None, "the fetch stage")

    first = engine.adjust_fetch_concurrency(+8)
    last = engine.adjust_fetch_concurrency(+FETCH_CONCURRENCY.high)

    assert first == Adjustment("fetch concurrency", old=3, new=11, asked=11)
    assert (last.old, last.new, last.bound_message) == (
        11,
        FETCH_CONCURRENCY.high,
        f"{FETCH_CONCURRENCY.high} is the most",
    )
    crawl = engine.snapshot().crawl
    assert crawl is not None and crawl.fetch_concurrency == FETCH_CONCURRENCY.high
    assert engine.snapshot().concurrency == llm_before
    assert await asyncio.wait_for(run, 60) is JobState.DONE


# ---------------------------------------------------------------- over the socket
async def test_a_step_over_the_socket_answers_what_it_did(running_job: RunningJob) -> None:
    engine = running_job.engine
    engine.pause()  # nothing is admitted while the limit is at its most
    async with await ControlClient.connect(running_job.path) as client:
        step = await client.adjust("adjust_concurrency", +3)
        assert step == Adjustment("concurrency", old=2, new=5, asked=5)
        assert engine.snapshot().concurrency == 5

        # An older viewer's absolute set works beside it.
        await client.control("set_concurrency", value=CONCURRENCY.high - 1)
        step = await client.adjust("adjust_concurrency", +5)
        assert (step.old, step.new, step.at_bound) == (
            CONCURRENCY.high - 1,
            CONCURRENCY.high,
            True,
        )
        step = await client.adjust("adjust_concurrency", +1)
        assert (step.changed, step.bound_message) == (False, f"{CONCURRENCY.high} is the most")
    assert engine.snapshot().concurrency == CONCURRENCY.high


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"op": "adjust_concurrency"}, r"integer delta from -4095 to 4095 \(got None\)"),
        ({"op": "adjust_concurrency", "delta": "1"}, "integer delta"),
        ({"op": "adjust_concurrency", "delta": True}, "integer delta"),
        ({"op": "adjust_concurrency", "delta": 1.0}, "integer delta"),
        ({"op": "adjust_concurrency", "delta": 4096}, "from -4095 to 4095"),
        ({"op": "adjust_fetch_concurrency", "delta": 8}, "does not crawl"),
        ({"op": "adjust_fetch_concurrency", "delta": -(10**21)}, "from -4095 to 4095"),
    ],
)
async def test_a_bad_step_gets_one_error_line_and_changes_nothing(
    running_job: RunningJob, request_: dict[str, object], error: str
) -> None:
    before = running_job.engine.snapshot().concurrency
    async with await ControlClient.connect(running_job.path) as client:
        with pytest.raises(ControlError, match=error) as raised:
            await client.request(request_)
        assert "\n" not in str(raised.value)
    assert running_job.engine.snapshot().concurrency == before


async def test_a_remote_source_sends_steps_and_notes_the_bound_in_the_event_log(
    running_job: RunningJob,
) -> None:
    engine = running_job.engine
    source = RemoteSource(running_job.path, refresh_s=0.05)
    await source.start()
    try:
        source.pause()
        assert source.adjust_concurrency(+2) is None  # known only when the job answers
        await source.settled()
        assert engine.snapshot().concurrency == 4

        source.set_concurrency(CONCURRENCY.high)
        source.adjust_concurrency(+1)
        await source.settled()
        assert engine.snapshot().concurrency == CONCURRENCY.high
        note = source.snapshot().events[-1]
        assert (note.kind, note.message) == (
            EventKind.WARNING,
            f"concurrency: {CONCURRENCY.high} is the most",
        )
        assert source.last_error == ""  # a bound is not an error

        source.adjust_fetch_concurrency(+8)
        await source.settled()
        assert "does not crawl" in source.last_error
    finally:
        await source.close()


def test_the_fixed_source_steps_like_the_engine() -> None:
    fixed = fixed_crawl_snapshot()
    assert fixed.crawl is not None
    source = FixedSource(fixed)

    assert source.adjust_concurrency(-1) == Adjustment("concurrency", 8, 7, 7)
    assert source.adjust_fetch_concurrency(+8) == Adjustment("fetch concurrency", 64, 72, 72)
    with pytest.raises(ValueError, match="does not crawl"):
        FixedSource(fixed_snapshot()).adjust_fetch_concurrency(+8)
    assert source.calls == [("set_concurrency", 7), ("set_fetch_concurrency", 72)]
