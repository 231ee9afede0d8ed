"""The check a running job makes of the preset it is asked to switch to."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engine.config.config_problem import ConfigError
from engine.config.presets import checked_preset, save_preset
from engine.config.settings import BUILTIN_PRESETS, Preset
from engine.limits.memory_floor import MIB

KNOWN = {**BUILTIN_PRESETS, "night": Preset(name="night", concurrency=2, batch_size=3)}
FLOOR = 152 * MIB  # a process that holds 152 MB: limits below 216 MB are refused


def test_a_known_name_gives_that_preset() -> None:
    assert checked_preset("night", KNOWN, None) == KNOWN["night"]
    assert checked_preset("aggressive", KNOWN, FLOOR) == BUILTIN_PRESETS["aggressive"]


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown preset 'nigth' \(known: aggressive, "):
        checked_preset("nigth", KNOWN, None)


def test_a_preset_file_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "slow.toml"
    save_preset(Preset(name="slow", concurrency=1, batch_size=1), path)

    assert checked_preset(path, KNOWN, None) == Preset(name="slow", concurrency=1, batch_size=1)
    assert checked_preset(str(path), KNOWN, None).name == "slow"  # a string ending in .toml

    path.write_text("concurrency = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}:1: concurrency: must be from 1 to 4096"):
        checked_preset(path, KNOWN, None)


def test_a_value_is_checked_and_named_by_its_preset() -> None:
    tight = replace(BUILTIN_PRESETS["aggressive"], name="tight", memory_soft_mb=180)

    with pytest.raises(ConfigError) as caught:
        checked_preset(tight, KNOWN, FLOOR)

    assert str(caught.value).startswith(
        "preset 'tight': memory_soft_mb: 180 MB is below this process's own floor of 152 MB"
    )
    assert checked_preset(tight, KNOWN, None) == tight  # no floor given: not judged by one


def test_a_known_preset_below_the_floor_is_refused_by_name() -> None:
    small = {"small": replace(Preset(), name="small", memory_soft_mb=100, memory_hard_mb=150)}

    with pytest.raises(ConfigError, match=r"^preset 'small': memory_soft_mb: 100 MB is below"):
        checked_preset("small", small, FLOOR)
