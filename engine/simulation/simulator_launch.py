"""Starting the bundled simulator in its own process for a job.

A separate process keeps the simulator's CPU out of the engine's (and the
dashboard's) event loop, as a real provider would be.  Providers whose
base_url is `http://127.0.0.1:0/v1` are pointed at it; their keys get
throwaway secrets, which are passed to the child through its environment,
never its command line; the variables holding the job's real keys are left
out of that environment (the simulator has no use for them).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping

from engine.config.key_secrets import key_id, key_variables, served_by_simulator
from engine.config.settings import JobConfig, SimulatorSettings
from engine.simulation.service_process import ServiceStartError, service_process

_READY = "listening on "


def simulator_keys(config: JobConfig, secrets: Mapping[str, str]) -> list[dict[str, object]]:
    """The simulator's keys: the job's own limits scaled by `limit_scale`."""
    scale = config.simulator.limit_scale
    keys: list[dict[str, object]] = []
    for provider in config.providers:
        if not served_by_simulator(provider):
            continue
        for key in provider.keys:
            keys.append(
                {
                    "secret": secrets[key_id(provider, key.alias)],
                    "rpm": None if key.rpm is None else max(1, int(key.rpm * scale)),
                    "tpm": None if key.tpm is None else max(1, int(key.tpm * scale)),
                }
            )
    return keys


def simulator_arguments(sim: SimulatorSettings, port: int) -> list[str]:
    """The simulator's command line for the job's [simulator] settings (keys aside)."""
    arguments = [
        "--host",
        sim.host,
        "--port",
        str(port),
        "--latency",
        f"{sim.latency_s[0]},{sim.latency_s[1]}",
        "--latency-distribution",
        sim.latency_distribution,
        "--burst-s",
        str(sim.burst_s),
        "--per-token",
        str(sim.seconds_per_output_token),
        "--fault-5xx",
        str(sim.fault_5xx),
        "--fault-reset",
        str(sim.fault_reset),
        "--fault-hang",
        str(sim.fault_hang),
        "--fault-malformed",
        str(sim.fault_malformed),
        "--fault-429",
        str(sim.fault_429),
        "--hang-s",
        str(sim.hang_s),
        "--arrival-jitter-s",
        str(sim.arrival_jitter_s),
        "--seed",
        str(sim.seed),
        "--batch-delay-s",
        str(sim.batch_delay_s),
        "--batch-fault-line",
        str(sim.batch_fault_line),
        "--batch-fault-fail",
        str(sim.batch_fault_fail),
        "--batch-fault-expire",
        str(sim.batch_fault_expire),
    ]
    if sim.drift_after > 0:  # drift is for demos and tests: off unless asked for
        arguments += ["--drift-after", str(sim.drift_after)]
        if sim.drift:
            arguments += ["--drift", ",".join(sim.drift)]
    return arguments


@contextlib.asynccontextmanager
async def launched_simulator(
    config: JobConfig, secrets: Mapping[str, str]
) -> AsyncIterator[dict[str, str]]:
    """Run the simulator for the job; yields {provider name: base_url} to use."""
    sim = config.simulator
    withheld = key_variables(config)
    env = {name: value for name, value in os.environ.items() if name not in withheld}
    env["CRAWLDECK_SIM_KEYS"] = json.dumps(simulator_keys(config, secrets))
    args = [
        "engine.simulation.simulator",
        *simulator_arguments(sim, port=sim.port),
        "--keys-from-env",
        "CRAWLDECK_SIM_KEYS",
        "--exit-with-parent",
    ]
    async with service_process("simulator", args, env) as line:
        if not line.startswith(_READY):
            raise ServiceStartError(f"the simulator did not start: {line}")
        url = line[len(_READY) :]
        yield {p.name: url for p in config.providers if served_by_simulator(p)}
