"""The job's settings as typed, immutable values.

`job_file.py` turns TOML into these; the engine only ever sees these.
Every field has the default a new user would want, so an empty table is a
valid table.  Values used outside a job file too (the `[crawl]` table by
the fetcher, the `[drift]` table by the monitor) check themselves when
built, with the same rules the job file's reader reports at their lines.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, get_args

from engine.config.cluster_table import ClusterSettings
from engine.config.setting_bounds import EXTRACT_WORKERS, FETCH_CONCURRENCY, PER_HOST
from engine.config.table_check import (
    Finding,
    apply_rules,
    at_least_one,
    not_negative,
    positive,
    refuse,
)

InputFormat = Literal["auto", "text", "csv", "jsonl", "documents"]
ProviderMode = Literal["online", "batch"]
LatencyDistribution = Literal["uniform", "lognormal"]
LATENCY_DISTRIBUTIONS: tuple[str, ...] = get_args(LatencyDistribution)


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
    # "batch": chunks go through the provider's Batch API (half price, a separate
    # quota, answered within the window) instead of one request each (`engine.batch`).
    mode: ProviderMode = "online"
    batch_price_input_per_m: float | None = None  # None: half the online price
    batch_price_output_per_m: float | None = None
    batch_window: Literal["24h"] = "24h"
    batch_deadline_s: float | None = None  # None: the window; past it a batch is given up
    batch_max_requests: int = 50_000  # per input file, the provider's limit
    batch_max_bytes: int = 200 * 1024 * 1024
    batch_poll_s: float = 5.0  # the first look at a batch; the wait grows to batch_poll_max_s
    batch_poll_max_s: float = 60.0
    # Where a request goes when its batch let it down (a failed line, a failed or
    # expired batch, one past its deadline): the next batch, or online at once —
    # the remainder online once the batch window is at risk.
    batch_retries: Literal["batch", "online"] = "batch"
    # Seconds after its submission a batch not yet ended is cut off: cancelled, what
    # it answered kept, the rest sent online at once (None: it runs its course).
    batch_online_after_s: float | None = None

    @property
    def batch_prices_per_m(self) -> tuple[float, float]:
        """(input, output) USD per million tokens in batch mode: the job file's, else half."""
        price_in = self.batch_price_input_per_m
        price_out = self.batch_price_output_per_m
        return (
            self.price_input_per_m / 2 if price_in is None else price_in,
            self.price_output_per_m / 2 if price_out is None else price_out,
        )


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
    # US dollars the job may spend, over all its runs in this store (None: no cap).
    # `engine.limits.spend_budget` holds it; each model needs a price.
    budget_usd: float | None = None
    # A job that mixes batch and online providers: the sources (globs) whose chunks
    # must come back now go online; the rest through the Batch API.
    online_sources: tuple[str, ...] = ()


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
    # "uniform" in latency_s, or "lognormal" with its ends as the 5th and 95th percentiles.
    latency_distribution: LatencyDistribution = "uniform"
    # Seconds of its per-minute limit a key's bucket holds: 60, a full minute
    # (OpenAI's kind); 1, the minute enforced per second.
    burst_s: float = 60.0
    seconds_per_output_token: float = 0.0005
    fault_5xx: float = 0.0
    fault_reset: float = 0.0
    fault_hang: float = 0.0
    fault_malformed: float = 0.0
    fault_429: float = 0.0  # a 429 whatever the budget: a provider that won't serve
    hang_s: float = 3600.0  # how long a hung request hangs before its connection drops
    limit_scale: float = 1.0  # real limits = configured limits × this
    # Up to this many seconds between a request's arrival and the buckets: a
    # network path's jitter (requests meet the buckets out of the order sent).
    arrival_jitter_s: float = 0.0
    seed: int = 1
    # Drift on cue, for demos and tests: from answer number `drift_after` on
    # (0: never), answers change in the ways `drift` names: "shorter",
    # "malformed", "missing_ids", "refusals", "fewer_items", "slower",
    # "slightly_slower", "faster", "embeddings", "server_errors" (a share of
    # calls fails with a 5xx).
    drift_after: int = 0
    drift: tuple[str, ...] = ()
    # The Batch API: seconds until a batch completes; the share of lines that
    # fail, of batches that fail validation, of batches that expire half done.
    batch_delay_s: float = 3.0
    batch_fault_line: float = 0.0
    batch_fault_fail: float = 0.0
    batch_fault_expire: float = 0.0


SIMULATED_DRIFTS = (
    "shorter",
    "malformed",
    "missing_ids",
    "refusals",
    "fewer_items",
    "slower",
    "slightly_slower",
    "faster",
    "embeddings",
    "server_errors",
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

    def __post_init__(self) -> None:
        refuse("crawl", crawl_findings(self))

    @property
    def user_agent_header(self) -> str:
        """The User-Agent sent: the template filled in; without a contact, no `(+…)` part."""
        filled = self.user_agent.replace("{version}", _crawldeck_version())
        if self.contact:
            return filled.replace("{contact}", self.contact)
        return filled.replace(" (+{contact})", "").replace("{contact}", "")


def crawl_findings(crawl: CrawlSettings) -> list[Finding]:
    """What is wrong with a crawl's limits, addresses and pins (`targets` is the job file's)."""
    findings = apply_rules(
        crawl,
        (
            ("concurrency", FETCH_CONCURRENCY.holds, FETCH_CONCURRENCY.requirement),
            ("per_host", PER_HOST.holds, PER_HOST.requirement),
            ("politeness_delay_s", not_negative, "must be 0 or more"),
            ("connect_timeout_s", positive, "must be more than 0"),
            ("read_timeout_s", positive, "must be more than 0"),
            ("total_timeout_s", positive, "must be more than 0"),
            ("max_body_bytes", at_least_one, "must be at least 1"),
            ("max_redirects", not_negative, "must be 0 or more"),
            ("max_depth", not_negative, "must be 0 or more"),
            ("max_pages_per_domain", at_least_one, "must be at least 1"),
            (
                "extract_workers",
                EXTRACT_WORKERS.holds,
                f"{EXTRACT_WORKERS.requirement} (0: one per core but one)",
            ),
            ("extract_timeout_s", positive, "must be more than 0"),
        ),
    )
    for entry in crawl.allow_addresses:
        if not _cidr_or_host(entry):
            findings.append(("allow_addresses", f"{entry!r} is neither a CIDR nor a host name"))
    for pattern, address in crawl.resolve.items():
        try:
            ipaddress.ip_address(address)
        except ValueError:
            findings.append(("resolve", f"{pattern} = {address!r} is not an IP address"))
    return findings


def _cidr_or_host(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return bool(re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9*.-]*[A-Za-z0-9])?", entry))


def _crawldeck_version() -> str:
    # Loaded here: only a crawl's User-Agent needs it, and the command line's start must not.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crawldeck")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0"


class GateAction(StrEnum):
    """What the engine does when a drift gate trips, mildest first."""

    WARN = "warn"  # an event, nothing else
    # Halve the batch size and allow two more retries: a bad answer then
    # costs fewer chunks and they get more tries; concurrency is untouched.
    SMALLER_BATCHES = "smaller_batches"
    CONSERVATIVE = "conservative"  # switch to the conservative preset
    PAUSE = "pause"  # stop dispatching until the operator resumes
    STOP = "stop"  # drain and end the job


METRICS: tuple[str, ...] = (
    "output_tokens",  # PSI of output tokens per chunk, per answer
    "answer_chars",  # PSI of each result's JSON length
    "items",  # PSI of items extracted per chunk
    "latency",  # PSI of answer latency
    "cost",  # PSI of cost per chunk, per answer
    "parse_failures",  # z of the rate of answers that are not the expected JSON
    "missing_ids",  # z of the rate of parsed answers that left out chunk ids
    "refusals",  # z of the rate of empty or refusal-like results
    "server_errors",  # z of the rate of calls the provider failed (5xx, resets, hangs)
    "sudden_shift",  # features whose mean jumped within the window (Page-Hinkley)
    "embeddings",  # cosine distance of the outputs' embedding centroid
)
"""Every metric a drift gate can name, in the order the dashboard shows them."""


@dataclass(frozen=True, slots=True)
class Gate:
    """Trip `metric` when its statistic reaches `threshold`; then do `action`."""

    metric: str
    threshold: float
    action: GateAction = GateAction.WARN


# Why these thresholds (noise measured on synthetic answers, 100,000 results
# in 10 runs, by tests/benchmarks/drift_overhead.py): PSI 0.25 is the usual
# "large shift" line; the monitor's PSI, net of chance, peaked at 0.15–0.21
# without drift.  z 4.0 is rare by chance (one-sided p ≈ 3e-5 per evaluation;
# noise peaked at 3.1) yet reached by a jump of a few percent to a third
# within one window.  One sudden shift is worth a trip.  A cosine distance of
# 0.1 between centroids is ~7× the noise of topical outputs (mean 0.015,
# peak 0.04) but depends on the embedding model: see `baseline show`'s spread.
# Actions default to warn, smaller batches or the conservative preset, never
# pause or stop: a headless job paused by a gate nobody chose waits forever.
# A job file asks for pause or stop where its operators want them
# (config.example.toml does).  Each action fits its metric and never cuts
# throughput for a problem throughput does not cause: malformed or
# incomplete answers get smaller batches (going slower does not mend them);
# only latency, which load can cause, slows the job, and only when it rose
# (the monitor judges latency and cost one-sided).  So do server errors
# (5xx, resets, hangs): going slower can mend an overloaded provider; their
# z is one-sided and judged against the rate the baseline saw, so a provider
# that always fails 2 % of calls never trips it, only one failing more.
# Smaller batches and the conservative preset are lifted when the metric
# comes back, and the conservative preset also when, tried, it does not bring
# latency or server errors back (`engine.drift.gate_actions`).
DEFAULT_GATES: tuple[Gate, ...] = (
    Gate("output_tokens", 0.25, GateAction.WARN),
    Gate("answer_chars", 0.25, GateAction.WARN),
    Gate("items", 0.25, GateAction.WARN),
    Gate("latency", 0.25, GateAction.CONSERVATIVE),
    Gate("cost", 0.25, GateAction.WARN),
    Gate("parse_failures", 4.0, GateAction.SMALLER_BATCHES),
    Gate("missing_ids", 4.0, GateAction.SMALLER_BATCHES),
    Gate("refusals", 4.0, GateAction.WARN),
    Gate("server_errors", 4.0, GateAction.CONSERVATIVE),
    Gate("sudden_shift", 1.0, GateAction.WARN),
    Gate("embeddings", 0.1, GateAction.WARN),
)

MIN_DRIFT_SAMPLES = 20
"""Below this many samples no drift statistic here means anything."""

DRIFT_SIZE_KEYS = ("baseline_size", "window_size", "evaluate_every", "min_window")


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """How the drift monitor learns, looks and judges (the `[drift]` table).

    Sizes count samples of each metric's own unit: results for per-chunk
    metrics, answers for per-answer ones, calls for server errors.  The
    baseline is done when it holds `baseline_size` results and answers.
    Every `evaluate_every` results (or answers and calls yielding none) each
    metric whose window holds `min_window` samples is evaluated against its
    gate.  A user's gate overrides the default gate of that metric field by
    field.
    """

    enabled: bool = True
    baseline_size: int = 200
    window_size: int = 200
    evaluate_every: int = 25
    min_window: int = 100
    gates: tuple[Gate, ...] = DEFAULT_GATES
    embeddings: bool = False
    embedding_model: str = "text-embedding-3-small"  # asked of the job's own keys

    def __post_init__(self) -> None:
        sizes = {key: getattr(self, key) for key in DRIFT_SIZE_KEYS}
        findings = drift_size_findings(sizes, given=set(DRIFT_SIZE_KEYS))
        seen: set[str] = set()
        for gate in self.gates:
            if gate.metric not in METRICS:
                findings.append((f"gates.{gate.metric}", unknown_metric(gate.metric)))
            elif gate.metric in seen:
                findings.append((f"gates.{gate.metric}", "has two gates"))
            elif not valid_threshold(gate.threshold):
                findings.append((f"gates.{gate.metric}.threshold", "must be a positive number"))
            seen.add(gate.metric)
        refuse("drift", findings)

    def gate(self, metric: str) -> Gate | None:
        """The gate of `metric`, or None if it has none."""
        return next((gate for gate in self.gates if gate.metric == metric), None)


def valid_threshold(value: Any) -> bool:
    """Whether `value` can be a gate's threshold: a finite number above 0."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def unknown_metric(metric: str) -> str:
    """What to say about a gate for a metric that does not exist."""
    return f"no such metric {metric!r} (metrics: {', '.join(METRICS)})"


def drift_size_findings(sizes: Mapping[str, int], given: set[str]) -> list[Finding]:
    """(key, message) for each drift size out of range or at odds with `window_size`.

    When two sizes disagree, the one the user wrote (`given`) is named, so
    shrinking `window_size` below the default `min_window` blames `window_size`.
    """
    findings: list[Finding] = []
    floors = {
        "baseline_size": MIN_DRIFT_SAMPLES,
        "window_size": MIN_DRIFT_SAMPLES,
        "evaluate_every": 1,
        "min_window": MIN_DRIFT_SAMPLES,
    }
    for key, floor in floors.items():
        if sizes[key] < floor:
            findings.append((key, f"must be at least {floor} (got {sizes[key]})"))
    window = sizes["window_size"]
    for key in ("evaluate_every", "min_window"):
        if sizes[key] <= window or any(k == key for k, _ in findings):
            continue
        if "window_size" in given and key not in given:
            findings.append(("window_size", f"must be at least {key} {sizes[key]} (got {window})"))
        else:
            findings.append((key, f"must be at most window_size {window} (got {sizes[key]})"))
    return findings


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
    cluster: ClusterSettings | None = None  # set: the job is shared with other workers via Redis
    # `mode` of the `[presets.NAME]` tables that say one, and the providers it applies to
    # (those without their own): `engine.config.route_mode`.
    preset_modes: dict[str, ProviderMode] = field(default_factory=dict)
    mode_from_preset: tuple[str, ...] = ()
    source: Path | None = None  # the TOML file this came from, for messages
    set_by_flags: tuple[str, ...] = ()  # the dotted keys `--set` gave, for messages


def plain_values(value: Any) -> Any:
    """Settings as plain TOML/JSON values: dataclasses as tables, paths as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_values(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(key): plain_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_values(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def effective_settings(config: JobConfig) -> dict[str, Any]:
    """Everything the run uses, as plain JSON-able values (only env var names, no secrets)."""
    settings: dict[str, Any] = plain_values(config)
    return settings
