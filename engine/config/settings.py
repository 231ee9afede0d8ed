"""The job's settings as typed, immutable values.

`config_file.py` turns TOML into these; the engine only ever sees these.
Every field has the default a new user would want, so an empty table is a
valid table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from engine.drift.gates import DriftSettings

InputFormat = Literal["auto", "text", "csv", "jsonl", "documents"]


@dataclass(frozen=True, slots=True)
class KeySettings:
    """One API key: where its secret lives and what it may use.

    `env` names an environment variable; the secret itself is never part of
    the settings, so it can't leak into the store, a preset file or a log.
    `rpm`/`tpm` of None mean "unknown": the engine learns them from the
    provider's `x-ratelimit-limit-*` headers and from 429s.
    """

    env: str
    alias: str = ""
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """An OpenAI-compatible endpoint and the keys that may call it."""

    name: str
    base_url: str
    model: str
    keys: tuple[KeySettings, ...] = ()
    price_input_per_m: float = 0.0
    price_output_per_m: float = 0.0
    request_timeout_s: float | None = None  # None: the preset's timeout applies
    max_output_tokens: int = 1024


@dataclass(frozen=True, slots=True)
class PromptSettings:
    """How a batch of chunks becomes a chat request.

    `user` is a template with `{chunks}` (the `[id=<id>] <text>` lines) and
    `{shape}` (the JSON shape expected back).  Bumping `version` makes every
    chunk eligible again: results are keyed by chunk id + prompt version +
    model.
    """

    system: str = "You extract structured facts from text. Answer with one JSON object only."
    user: str = (
        'For every chunk below, return one entry in "results" with the chunk\'s id.\n'
        "Answer with JSON of this shape: {shape}\n\n{chunks}"
    )
    shape: str = '{"results": [{"id": "<chunk id>", "summary": "<one sentence>"}]}'
    version: str = "1"
    temperature: float = 0.0


@dataclass(frozen=True, slots=True)
class Preset:
    """The knobs an operator switches between mid-run."""

    name: str = "default"
    concurrency: int = 16
    batch_size: int = 5
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    request_timeout_s: float = 60.0
    batch_delay_s: float = 0.0
    adaptive_concurrency: bool = True
    memory_soft_mb: int = 1536
    memory_hard_mb: int = 2048

    def with_values(self, **changes: Any) -> Preset:
        """A copy with some fields changed (used by `--set preset.x=…`)."""
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


BUILTIN_PRESETS: dict[str, Preset] = {
    "conservative": Preset(
        name="conservative",
        concurrency=4,
        batch_size=5,
        max_retries=6,
        backoff_base_s=1.0,
        backoff_max_s=60.0,
        request_timeout_s=90.0,
        batch_delay_s=0.25,
        adaptive_concurrency=True,
        memory_soft_mb=1024,
        memory_hard_mb=1536,
    ),
    "aggressive": Preset(
        name="aggressive",
        concurrency=64,
        batch_size=10,
        max_retries=4,
        backoff_base_s=0.25,
        backoff_max_s=20.0,
        request_timeout_s=60.0,
        batch_delay_s=0.0,
        adaptive_concurrency=True,
        memory_soft_mb=1536,
        memory_hard_mb=2048,
    ),
}


@dataclass(frozen=True, slots=True)
class JobSettings:
    """What to process and where to keep the results."""

    name: str = "job"
    input: str = ""  # a file, a directory, or a glob
    input_format: InputFormat = "auto"
    text_field: str = "text"  # csv/jsonl: the column/key holding the text
    id_field: str = ""  # csv/jsonl: optional column/key naming each record
    store: str = "crawldeck.db"
    chunk_tokens: int = 800
    chunk_overlap_tokens: int = 80


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """The bundled provider simulator, started by `run` when `autostart`.

    Keys whose environment variable is unset get a throwaway per-run secret
    that only this simulator knows, so the demo needs no real key.
    """

    autostart: bool = False
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port; providers' base_url is rewritten to it
    latency_s: tuple[float, float] = (0.5, 2.0)
    seconds_per_output_token: float = 0.0005
    fault_5xx: float = 0.0
    fault_reset: float = 0.0
    fault_hang: float = 0.0
    fault_malformed: float = 0.0
    fault_429: float = 0.0  # a 429 whatever the budget: a provider that won't serve
    limit_scale: float = 1.0  # real limits = configured limits × this
    seed: int = 1
    # Drift on cue, for demos and tests: from answer number `drift_after` on
    # (0: never), answers change in the ways `drift` names: "shorter",
    # "malformed", "missing_ids", "refusals", "fewer_items", "slower",
    # "embeddings".
    drift_after: int = 0
    drift: tuple[str, ...] = ()


SIMULATED_DRIFTS = (
    "shorter",
    "malformed",
    "missing_ids",
    "refusals",
    "fewer_items",
    "slower",
    "embeddings",
)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Engine internals that rarely need changing."""

    snapshot_events: int = 200  # how many recent events a snapshot carries
    store_batch_rows: int = 500
    store_batch_ms: int = 200
    memory_sample_s: float = 1.0
    queue_size: int = 1024  # bound of each queue between stages
    # A headless run's control socket drops a client that sends nothing for
    # this long, so stuck connections cannot keep viewers out.
    control_idle_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class RateLimitWaits:
    """How long 429s are waited out before a key or a batch gives up.

    A key's *round* is a 429 on a request sent after its previous counted
    429, so a burst of 429s on requests already in flight counts once.
    After `key_streak` rounds in a row with no answer, or once its
    cool-downs since the last answer would pass `key_wait_s`, a key cools
    for longer: `key_escalation_s`, then twice that, `key_escalations`
    times; a 429 after those disables it.  A retry-after longer than
    `key_wait_s` on its own disables it at once.  Any answer resets all of
    it.  A batch fails once it has taken `batch_429s` 429s, or once the
    cool-downs its 429s asked for add up to more than `batch_wait_s`.

    The defaults never give up on a key that is merely busy: a provider
    that enforces its minute per second answers a few 429s routinely, but
    each one's retry-after is followed by answers, and every answer starts
    the count again.  Ten refusals in a row with nothing answered, or five
    minutes of cooling without one answer, is a key that cannot serve (a
    daily cap, a revoked tier, a broken provider); even then it gets
    30 s + 1 min + 2 min of longer cool-downs in which one answer restores
    it.  A batch's 20 429s or 15 minutes is far past what load causes
    while its keys are answering others.
    """

    key_streak: int = 10
    key_wait_s: float = 300.0
    key_escalations: int = 3
    key_escalation_s: float = 30.0
    batch_429s: int = 20
    batch_wait_s: float = 900.0


@dataclass(frozen=True, slots=True)
class CrawlSettings:
    """A crawl job: web targets fetched politely, their pages' text fed to the pipeline.

    `targets` is a file of domains or URLs (one per line, CSV or JSONL).
    Fetch limits run apart from the LLM's: `concurrency` fetches in flight
    across all hosts, `per_host` and `politeness_delay_s` per host.
    `allow_addresses` admits private/loopback CIDRs or host names (local
    tests only: by default no request reaches them), and `resolve` pins
    host-name patterns to addresses, like curl's --resolve.
    """

    targets: str = ""
    targets_column: str = ""  # CSV column or JSONL field (default: url/domain/host)
    concurrency: int = 64
    per_host: int = 2
    politeness_delay_s: float = 1.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 20.0
    total_timeout_s: float = 30.0
    max_body_bytes: int = 5_000_000
    max_redirects: int = 5
    content_types: tuple[str, ...] = ("text/html", "application/xhtml+xml", "text/plain")
    respect_robots: bool = True
    user_agent: str = "crawldeck/{version} (+{contact})"
    contact: str = ""
    allow_addresses: tuple[str, ...] = ()
    resolve: dict[str, str] = field(default_factory=dict)  # host pattern -> IP address
    max_depth: int = 0  # follow same-site links this many clicks deep
    max_pages_per_domain: int = 1
    extract_workers: int = 0  # processes for HTML extraction; 0: one per core but one
    # Per page; past it the worker is killed and replaced.  A few milliseconds
    # is usual, a second or two a very large page on a busy machine.
    extract_timeout_s: float = 20.0


@dataclass(frozen=True, slots=True)
class JobConfig:
    """Everything a run needs, resolved: defaults < file < preset < flags."""

    job: JobSettings = field(default_factory=JobSettings)
    providers: tuple[ProviderSettings, ...] = ()
    prompt: PromptSettings = field(default_factory=PromptSettings)
    presets: dict[str, Preset] = field(default_factory=lambda: dict(BUILTIN_PRESETS))
    preset: Preset = field(default_factory=lambda: BUILTIN_PRESETS["conservative"])
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    crawl: CrawlSettings | None = None  # set: targets are crawled instead of `job.input` read
    drift: DriftSettings = field(default_factory=DriftSettings)
    rate_limit_waits: RateLimitWaits = field(default_factory=RateLimitWaits)
    source: Path | None = None  # the TOML file this came from, for messages
