"""The bundled simulator's process: started for a job, it never holds the job's real keys."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from engine.config.key_secrets import resolve_secrets
from engine.config.settings import KeySettings, SimulatorSettings
from engine.simulation.simulator import config_from_args
from engine.simulation.simulator_launch import launched_simulator, simulator_arguments
from tests.engine.conftest import job_config, write_records

REAL_KEY = "sk-proj-" + "Rl7kQ2nW9xV4bT1mZ8cJ5pY3sH6dG0fA"
SIM_VARIABLE_VALUE = "sk-proj-" + "Ua3eO6iK9tB2wN5xL8rC1mV4zQ7jP0hS"


async def test_the_simulator_gets_throwaway_keys_and_none_of_the_jobs_key_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = job_config(tmp_path, write_records(tmp_path / "in.txt", 1), "http://127.0.0.1:0/v1")
    simulated = config.providers[0]
    real = replace(
        simulated,
        name="real",
        base_url="https://provider.invalid/v1",  # never called: the job does not run
        keys=(KeySettings(env="CRAWLDECK_TEST_REAL_KEY", alias="main", rpm=60, tpm=100_000),),
    )
    config = replace(config, providers=(simulated, real))
    # A user who ran the example job against the simulator with real keys set.
    monkeypatch.setenv("CRAWLDECK_TEST_REAL_KEY", REAL_KEY)
    monkeypatch.setenv(simulated.keys[0].env, SIM_VARIABLE_VALUE)
    secrets = resolve_secrets(config, os.environ, simulated=True)

    async with launched_simulator(config, secrets) as urls:
        children = [
            child
            for child in psutil.Process().children(recursive=True)
            if "engine.simulation.simulator" in child.cmdline()
        ]
        assert len(children) == 1
        environ = children[0].environ()
        cmdline = " ".join(children[0].cmdline())

    assert set(urls) == {"sim"}
    assert "CRAWLDECK_TEST_REAL_KEY" not in environ
    assert simulated.keys[0].env not in environ
    everything = cmdline + "\n".join(f"{k}={v}" for k, v in environ.items())
    assert REAL_KEY[8:] not in everything and SIM_VARIABLE_VALUE[8:] not in everything
    assert secrets["sim/k1"].startswith("sim-")
    assert secrets["sim/k1"] in environ["CRAWLDECK_SIM_KEYS"]  # the throwaway one, as before


def test_the_simulators_command_line_carries_every_setting_it_models() -> None:
    settings = SimulatorSettings(
        latency_s=(0.5, 2.0),
        latency_distribution="lognormal",
        burst_s=1,
        hang_s=120,
        arrival_jitter_s=0.15,
        fault_5xx=0.02,
        fault_reset=0.01,
        fault_hang=0.005,
        fault_malformed=0.01,
        seed=7,
    )

    config, host, port = config_from_args(simulator_arguments(settings, port=0))

    assert (host, port) == ("127.0.0.1", 0)
    assert config.latency_s == (0.5, 2.0)
    assert config.latency_distribution == "lognormal"
    assert config.burst_s == 1.0
    assert config.hang_s == 120.0
    assert config.arrival_jitter_s == 0.15
    assert (config.fault_5xx, config.fault_reset, config.fault_hang, config.fault_malformed) == (
        0.02,
        0.01,
        0.005,
        0.01,
    )
    assert config.seed == 7
    default, _, _ = config_from_args(simulator_arguments(SimulatorSettings(), port=0))
    assert (default.burst_s, default.latency_distribution) == (60.0, "uniform")
