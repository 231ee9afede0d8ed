"""Shared set-up for engine tests: a real simulator on loopback and small jobs."""

from __future__ import annotations

import sqlite3
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config.settings import (
    BUILTIN_PRESETS,
    JobConfig,
    JobSettings,
    KeySettings,
    Preset,
    ProviderSettings,
)
from engine.simulation.simulator import ProviderSimulator, SimKey, SimulatorConfig

SimFactory = Callable[..., "AsyncIterator[ProviderSimulator]"]


def write_records(path: Path, count: int, words: int = 30) -> Path:
    """A text input with `count` distinct records, one per line."""
    lines = []
    for i in range(count):
        body = " ".join(f"w{(i * 7 + j) % 97}" for j in range(words))
        lines.append(f"record {i}: {body}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def job_config(
    tmp_path: Path,
    input_path: Path,
    base_url: str,
    keys: Sequence[tuple[str, int | None, int | None]] = (("k1", 6000, 10_000_000),),
    preset: Preset | None = None,
    store: str = "results.db",
) -> tuple[JobConfig, dict[str, str]]:
    """A job over `input_path` against `base_url`; returns it and the secrets by key id."""
    provider = ProviderSettings(
        name="sim",
        base_url=base_url,
        model="gpt-4o-mini",
        keys=tuple(
            KeySettings(env=f"KEY_{alias.upper()}", alias=alias, rpm=rpm, tpm=tpm)
            for alias, rpm, tpm in keys
        ),
        price_input_per_m=0.15,
        price_output_per_m=0.6,
    )
    active = preset or replace(
        BUILTIN_PRESETS["aggressive"],
        concurrency=16,
        batch_size=5,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        request_timeout_s=5.0,
    )
    config = JobConfig(
        job=JobSettings(
            name="test-job",
            input=str(input_path),
            input_format="text",
            store=str(tmp_path / store),
            chunk_tokens=400,
            chunk_overlap_tokens=0,
        ),
        providers=(provider,),
        preset=active,
        presets={**BUILTIN_PRESETS, active.name: active},
    )
    secrets = {f"sim/{alias}": f"secret-{alias}" for alias, _, _ in keys}
    return config, secrets


def sim_keys(keys: Sequence[tuple[str, int | None, int | None]]) -> tuple[SimKey, ...]:
    return tuple(SimKey(f"secret-{alias}", rpm, tpm) for alias, rpm, tpm in keys)


@pytest.fixture
async def simulator() -> AsyncIterator[Callable[..., ProviderSimulator]]:
    """Start simulators on loopback; all are stopped at the end of the test."""
    started: list[ProviderSimulator] = []

    async def start(**config: object) -> ProviderSimulator:
        sim = ProviderSimulator(SimulatorConfig(**config))  # type: ignore[arg-type]
        await sim.start()
        started.append(sim)
        return sim

    yield start  # type: ignore[misc]
    for sim in started:
        await sim.stop()


def stored(db: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(result chunk ids, [(failure chunk id, reason)]) in the store."""
    with sqlite3.connect(db) as conn:
        results = [row[0] for row in conn.execute("SELECT chunk_id FROM results")]
        failures = [(r[0], r[1]) for r in conn.execute("SELECT chunk_id, reason FROM failures")]
    return results, failures


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (and its key), made by the openssl tool."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost"]
    command += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-keyout", str(key), "-out", str(cert), "-addext", "subjectAltName=DNS:localhost"]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


def tls_server(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context
