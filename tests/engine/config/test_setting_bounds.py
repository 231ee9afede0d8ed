"""Concurrency, batch size and fetch concurrency are bounded wherever they are set.

One set of bounds (`engine.config.setting_bounds`); a value outside them is refused
with the usual one line (file, line, key), never clamped.  The control
socket's refusals are in `test_control_socket.py`, the dashboard's in
`tests/tui/test_steering_bounds.py`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config.config_problem import ConfigError
from engine.config.job_file import load_config
from engine.config.presets import load_preset_file
from engine.config.setting_bounds import BATCH_SIZE, CONCURRENCY, FETCH_CONCURRENCY, Bound
from engine.config.settings import Preset
from engine.engine import Engine
from engine.simulation.simulator import ProviderSimulator
from tests.engine.config.test_config_file import MINIMAL, line_of, write
from tests.engine.conftest import job_config, sim_keys, write_records

HUGE = 10**21  # what was once accepted from the socket and the job file


def problems(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return [str(problem) for problem in caught.value.problems]


def test_the_bounds_hold_whole_numbers_in_range_only() -> None:
    bound = Bound(1, 10)

    assert [bound.holds(v) for v in (1, 10, 0, 11, True, 5.0, "5", None)] == [
        True, True, False, False, False, False, False, False
    ]  # fmt: skip
    assert bound.problem(11) == "must be from 1 to 10 (got 11)"
    with pytest.raises(ValueError, match=r"^size: must be from 1 to 10 \(got 0\)$"):
        bound.check("size", 0)
    assert (CONCURRENCY.high, BATCH_SIZE.high, FETCH_CONCURRENCY.high) == (4096, 1000, 4096)


def test_the_job_file_is_refused_past_the_bounds_at_each_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + f"""
        [presets.wild]
        concurrency = {HUGE}
        batch_size = 1001

        [crawl]
        targets = "domains.txt"
        concurrency = 4097
        per_host = 65
        extract_workers = 1000
        """,
    )
    crawl_line = line_of(path, "concurrency = 4097")

    assert problems(path) == [
        f"{path}:{line_of(path, f'concurrency = {HUGE}')}: presets.wild.concurrency: "
        f"must be from 1 to 4096 (got {HUGE})",
        f"{path}:{line_of(path, 'batch_size')}: presets.wild.batch_size: "
        "must be from 1 to 1000 (got 1001)",
        f"{path}:{crawl_line}: crawl.concurrency: must be from 1 to 4096 (got 4097)",
        f"{path}:{crawl_line + 1}: crawl.per_host: must be from 1 to 64 (got 65)",
        f"{path}:{crawl_line + 2}: crawl.extract_workers: must be from 0 to 256 "
        "(0: one per core but one) (got 1000)",
    ]


def test_the_edges_themselves_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + "\n[presets.edge]\nconcurrency = 4096\nbatch_size = 1000\n",
    )

    edge = load_config(path, preset="edge").preset

    assert (edge.concurrency, edge.batch_size) == (4096, 1000)


def test_a_flag_past_the_bounds_is_blamed_on_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)

    assert problems(path, overrides=["preset.concurrency=5000", "preset.batch_size=2000"]) == [
        "--set: preset.concurrency: must be from 1 to 4096 (got 5000)",
        "--set: preset.batch_size: must be from 1 to 1000 (got 2000)",
    ]


def test_a_preset_file_past_the_bounds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "night.toml"
    path.write_text(textwrap.dedent(f"concurrency = {HUGE}\n"), encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_preset_file(path)

    assert str(caught.value) == f"{path}:1: concurrency: must be from 1 to 4096 (got {HUGE})"


async def test_the_engines_controls_refuse_out_of_range_values_and_change_nothing(
    tmp_path: Path, simulator: Callable[..., ProviderSimulator]
) -> None:
    keys = (("k1", 6000, 10_000_000),)
    sim = await simulator(keys=sim_keys(keys))  # type: ignore[misc]
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 5), sim.base_url, keys
    )
    engine = Engine(config, secrets)
    before = engine.snapshot()

    for value in (0, 4097, HUGE):
        with pytest.raises(ValueError, match=r"^concurrency: must be from 1 to 4096"):
            engine.set_concurrency(value)
    with pytest.raises(ConfigError, match="concurrency: must be from 1 to 4096"):
        engine.apply_preset(replace(Preset(), concurrency=HUGE))
    with pytest.raises(ConfigError, match="batch_size: must be from 1 to 1000"):
        engine.apply_preset(replace(Preset(), batch_size=1001))

    after = engine.snapshot()
    assert (after.concurrency, after.preset) == (before.concurrency, before.preset)
    engine.set_concurrency(4096)
    assert engine.snapshot().concurrency == 4096
