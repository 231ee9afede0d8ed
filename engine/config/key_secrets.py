"""Where API keys come from: environment variables named in the job file.

Secrets live only in memory: never in settings, the store, events or logs.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Mapping
from urllib.parse import urlsplit

from engine.config.config_problem import ConfigError
from engine.config.job_file import missing_key_variables
from engine.config.settings import JobConfig, ProviderSettings


def key_id(provider: ProviderSettings, alias: str) -> str:
    return f"{provider.name}/{alias}"


def served_by_simulator(provider: ProviderSettings) -> bool:
    """Providers at 127.0.0.1 port 0 are placeholders for the bundled simulator."""
    parts = urlsplit(provider.base_url)
    return parts.hostname in ("127.0.0.1", "localhost") and parts.port == 0


def key_variables(config: JobConfig) -> set[str]:
    """The environment variables the job's keys are read from."""
    return {key.env for provider in config.providers for key in provider.keys}


def resolve_secrets(
    config: JobConfig, environ: Mapping[str, str], simulated: bool = False
) -> dict[str, str]:
    """Map each key id to its secret, or raise ConfigError naming missing variables.

    With `simulated`, keys of providers served by the bundled simulator get
    throwaway secrets instead (a real key must never be sent to the simulator).
    """
    result: dict[str, str] = {}
    real = config
    if simulated:
        sim = tuple(p for p in config.providers if served_by_simulator(p))
        for provider in sim:
            for key in provider.keys:
                result[key_id(provider, key.alias)] = "sim-" + _random.token_hex(12)
        real = _without(config, sim)
    problems = missing_key_variables(real, environ)
    if problems:
        raise ConfigError(problems)
    for provider in real.providers:
        for key in provider.keys:
            result[key_id(provider, key.alias)] = environ[key.env]
    return result


def _without(config: JobConfig, providers: tuple[ProviderSettings, ...]) -> JobConfig:
    from dataclasses import replace

    return replace(config, providers=tuple(p for p in config.providers if p not in providers))
