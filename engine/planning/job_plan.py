"""A job's plan: requests, tokens, cost and time, worked out before anything is sent.

`make_plan` batches the input with the engine's own code
(`planned_requests`), reads the store for what is done and what past
answers were like (`stored_work`), and bounds the time by the keys' limits,
their burst and the concurrency ceiling (`time_bound`).

What a plan cannot read from the input it estimates, and says which way:

- **output tokens** — from the job's stored results when there are any
  (the same job runs again and again), else `output_tokens_per_chunk` given
  by the caller, else the engine's own first guess before any answer (150 a
  chunk, as the dispatcher reserves);
- **billed input tokens** — the engine's admission estimate (UTF-8 bytes ÷
  3, leaning high on purpose) times what the provider billed for the stored
  answers' prompts over that estimate, else times 0.75: providers' tokenizers
  count about 4 bytes a token of English, which the estimate counts as 4/3;
- **latency** — stored answers, else the caller's, else the bundled
  simulator's configuration when it is the provider, else a 2 s guess;
- **the provider's burst** — the simulator's `burst_s` when it is the
  provider, else the caller's, else the engine's own first guess (2 s).

The provider charges a request at admission its prompt (the engine sends
no `max_tokens`), so that is the `c` the tokens limits divide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config.key_secrets import served_by_simulator
from engine.config.settings import JobConfig, ProviderSettings
from engine.limits.rate_limiter import BURST_SECONDS
from engine.planning.latency_outlook import DEFAULT_LATENCY_S, LatencyOutlook
from engine.planning.planned_requests import PlannedRequests, planned_requests
from engine.planning.stored_work import AnswerHistory, StoredWork
from engine.planning.time_bound import (
    KeyLimits,
    TimeBound,
    TimeInputs,
    time_bound,
    with_one_more,
)

DEFAULT_OUTPUT_TOKENS_PER_CHUNK = 150.0
"""Output tokens a chunk is expected to bring back before any answer (the dispatcher's guess)."""
DEFAULT_BILLED_PER_ESTIMATED = 0.75
"""Billed prompt tokens per estimated one, no history: 4 bytes a token, not the 3 estimated."""
BATCH_PRICE_SHARE = 0.5
"""Batch APIs (OpenAI's, Anthropic's) bill half the online price, unless the job file says else."""


@dataclass(frozen=True, slots=True)
class PlanHints:
    """What the caller knows better than the defaults (None: use the store or the default)."""

    output_tokens_per_chunk: float | None = None
    latency_s: float | None = None
    burst_s: float | None = None


@dataclass(frozen=True, slots=True)
class Prices:
    """US dollars per million tokens, online and through a batch API."""

    input_per_m: float
    output_per_m: float
    batch_input_per_m: float
    batch_output_per_m: float


def prices_of(provider: ProviderSettings) -> Prices:
    """A provider's prices: the job file's, batch at half unless it names batch prices."""
    batch_in = getattr(provider, "batch_price_input_per_m", None)
    batch_out = getattr(provider, "batch_price_output_per_m", None)
    return Prices(
        provider.price_input_per_m,
        provider.price_output_per_m,
        provider.price_input_per_m * BATCH_PRICE_SHARE if batch_in is None else batch_in,
        provider.price_output_per_m * BATCH_PRICE_SHARE if batch_out is None else batch_out,
    )


@dataclass(frozen=True, slots=True)
class OneMoreKey:
    """What one more key of a kind (a provider and its limits) would make of the time."""

    provider: str
    like: str  # the alias of a key of that kind
    rpm: float | None
    tpm: float | None
    time_s: float
    binds: str


@dataclass(frozen=True, slots=True)
class JobPlan:
    """Everything a plan says; `record()` is its JSON with stable field names."""

    job: str
    store: str
    work: PlannedRequests
    history: AnswerHistory
    input_tokens_billed: float
    billed_source: str
    output_tokens: float
    output_source: str
    charge_per_request: float
    cost_online_usd: float
    cost_batch_usd: float
    keys: tuple[KeyLimits, ...]
    key_shares: tuple[float, ...]
    time: TimeBound
    inputs: TimeInputs
    burst_source: str
    one_more: tuple[OneMoreKey, ...]

    def binding(self) -> str:
        """Which limit binds the time, in a line."""
        time, inputs = self.time, self.inputs
        if time.binds == "nothing":
            return "nothing: no request to send"
        if time.binds == "limits":
            c = self.charge_per_request
            axes = ", ".join(f"{k.alias} {k.binds(c).upper()}" for k in self.keys)
            return f"the keys' limits ({axes}) beyond their {inputs.burst_s:g} s burst"
        if time.binds == "batch_delay":
            return f"the preset's batch_delay_s ({inputs.batch_delay_s:g} s before each request)"
        why = (
            "the keys' limits are not known"
            if time.limits_bound_s is None
            else "the job fits in the keys' burst"
            if time.limits_bound_s == 0
            else f"the limits alone allow {time.limits_s:.1f} s"
        )
        return (
            f"concurrency: latency-bound, at most {inputs.concurrency} in flight, "
            f"{inputs.latency.mean:.2f} s mean latency ({why})"
        )

    def key_record(self, i: int) -> dict[str, Any]:
        key, c = self.keys[i], self.charge_per_request
        return {
            "provider": key.provider,
            "alias": key.alias,
            "rpm": key.rpm,
            "tpm": key.tpm,
            "requests_per_min_by_tpm": _rounded(key.by_tokens(c)),
            "requests_per_min": _rounded(key.per_minute(c)),
            "binds": key.binds(c),
            "share": round(self.key_shares[i], 4),
        }

    def record(self) -> dict[str, Any]:
        work, time = self.work, self.time
        crawl = work.crawl
        return {
            "job": self.job,
            "store": self.store,
            "input": {
                "chunks": work.chunks,
                "duplicates": work.duplicates,
                "already_done": work.already_done,
                "records_skipped": work.records_skipped,
                "pending_chunks": work.pending,
                "crawl": None
                if crawl is None
                else {
                    "targets": crawl.targets,
                    "targets_without_pages": crawl.without_pages,
                    "pages": crawl.pages,
                    "target_lines_skipped": crawl.skipped_lines,
                },
            },
            "requests": work.requests,
            "chunks_per_request": round(work.chunks_per_request, 3),
            "tokens": {
                "input_estimate": work.prompt_tokens,
                "input_billed": round(self.input_tokens_billed),
                "input_billed_source": self.billed_source,
                "output": round(self.output_tokens),
                "output_source": self.output_source,
                "charged_per_request": round(self.charge_per_request, 1),
            },
            "cost_usd": {
                "online": round(self.cost_online_usd, 6),
                "batch": round(self.cost_batch_usd, 6),
            },
            "time": {
                "seconds": round(time.time_s, 3),
                "binds": time.binds,
                "binding": self.binding(),
                "limits_bound_s": _rounded(time.limits_bound_s),
                "limits_s": _rounded(time.limits_s),
                "concurrency_s": round(time.concurrency_s, 3),
                "batch_delay_s": round(time.pace_s, 3),
                "requests_per_min": _rounded(time.requests_per_min),
                "burst_s": self.inputs.burst_s,
                "burst_source": self.burst_source,
                "burst_requests": _rounded(time.burst_requests),
                "concurrency_ceiling": self.inputs.concurrency,
                "latency_mean_s": round(self.inputs.latency.mean, 3),
                "latency_source": self.inputs.latency.source,
                "unknown_limits": list(time.unknown_limits),
            },
            "keys": [self.key_record(i) for i in range(len(self.keys))],
            "one_more_key": [
                {
                    "provider": more.provider,
                    "like": more.like,
                    "rpm": more.rpm,
                    "tpm": more.tpm,
                    "time_s": round(more.time_s, 3),
                    "saves_s": round(time.time_s - more.time_s, 3),
                    "binds": more.binds,
                }
                for more in self.one_more
            ],
        }


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def key_limits(config: JobConfig) -> list[KeyLimits]:
    """Every key of the job with the limits its provider enforces (the simulator's scaled)."""
    keys: list[KeyLimits] = []
    scale = config.simulator.limit_scale
    for provider in config.providers:
        factor = scale if served_by_simulator(provider) else 1.0
        for key in provider.keys:
            rpm = None if key.rpm is None else max(1, int(key.rpm * factor))
            tpm = None if key.tpm is None else max(1, int(key.tpm * factor))
            keys.append(KeyLimits(provider.name, key.alias, rpm, tpm))
    return keys


def _all_simulated(config: JobConfig) -> bool:
    return config.simulator.autostart and all(served_by_simulator(p) for p in config.providers)


async def make_plan(config: JobConfig, hints: PlanHints | None = None) -> JobPlan:
    """The job's plan (see the module).  Sends nothing; reads the input and the store.

    Raises InputError (or TargetError/OSError) for input a run could not read
    and StoreError for a store that cannot be read, as a run would.
    """
    hints = hints or PlanHints()
    with StoredWork(config.job.store) as stored:
        work = await planned_requests(config, stored, simulated=_all_simulated(config))
        history = stored.history([p.model for p in config.providers], config.prompt)

    if history.output_tokens_per_chunk is not None:
        per_chunk = history.output_tokens_per_chunk
        output_source = f"stored results ({history.results} chunks)"
    elif hints.output_tokens_per_chunk is not None:
        per_chunk = hints.output_tokens_per_chunk
        output_source = "given"
    elif work.simulated_output_tokens is not None and work.pending:
        per_chunk = work.simulated_output_tokens / work.pending
        output_source = "the simulator's answers to this input"
    else:
        per_chunk = DEFAULT_OUTPUT_TOKENS_PER_CHUNK
        output_source = f"default ({DEFAULT_OUTPUT_TOKENS_PER_CHUNK:g} a chunk)"
    if history.billed_per_estimated is not None:
        billed_ratio = history.billed_per_estimated
        billed_source = (
            f"stored results ({history.requests} requests: {billed_ratio:.3f} × estimate)"
        )
    else:
        billed_ratio = DEFAULT_BILLED_PER_ESTIMATED
        billed_source = f"default ({billed_ratio:g} × estimate: 4 bytes a token)"

    n = work.requests
    output_tokens = per_chunk * work.pending
    billed_input = work.prompt_tokens * billed_ratio
    charge = billed_input / n if n else 0.0
    output_per_request = output_tokens / n if n else 0.0

    if history.latencies_s:
        latency = LatencyOutlook.of(
            history.latencies_s, f"stored results ({history.requests} requests)"
        )
    elif hints.latency_s is not None:
        latency = LatencyOutlook.of([hints.latency_s], "given")
    elif _all_simulated(config):
        latency = LatencyOutlook.simulated(config.simulator, output_per_request)
    else:
        latency = LatencyOutlook.of([DEFAULT_LATENCY_S], f"default ({DEFAULT_LATENCY_S:g} s)")

    if _all_simulated(config):
        burst_s, burst_source = config.simulator.burst_s, "the simulator's burst_s"
    elif hints.burst_s is not None:
        burst_s, burst_source = hints.burst_s, "given"
    else:
        burst_s, burst_source = BURST_SECONDS, f"the engine's first guess ({BURST_SECONDS:g} s)"

    inputs = TimeInputs(
        requests=n,
        charge=charge,
        reservation=work.prompt_tokens_per_request + output_per_request,
        burst_s=burst_s,
        concurrency=config.preset.concurrency,
        batch_delay_s=config.preset.batch_delay_s,
        latency=latency,
    )
    keys = key_limits(config)
    bound = time_bound(keys, inputs)

    shares = _shares(keys, charge)
    prices = {p.name: prices_of(p) for p in config.providers}
    online = batch = 0.0
    for key, share in zip(keys, shares, strict=True):
        price = prices[key.provider]
        online += share * (billed_input * price.input_per_m + output_tokens * price.output_per_m)
        batch += share * (
            billed_input * price.batch_input_per_m + output_tokens * price.batch_output_per_m
        )

    one_more: list[OneMoreKey] = []
    seen: set[tuple[str, float | None, float | None]] = set()
    for key in keys:
        if key.kind in seen:
            continue
        seen.add(key.kind)
        more = time_bound(with_one_more(keys, key), inputs)
        one_more.append(
            OneMoreKey(key.provider, key.alias, key.rpm, key.tpm, more.time_s, more.binds)
        )

    return JobPlan(
        job=config.job.name,
        store=config.job.store,
        work=work,
        history=history,
        input_tokens_billed=billed_input,
        billed_source=billed_source,
        output_tokens=output_tokens,
        output_source=output_source,
        charge_per_request=charge,
        cost_online_usd=online / 1e6,
        cost_batch_usd=batch / 1e6,
        keys=tuple(keys),
        key_shares=tuple(shares),
        time=bound,
        inputs=inputs,
        burst_source=burst_source,
        one_more=tuple(one_more),
    )


def _shares(keys: list[KeyLimits], charge: float) -> list[float]:
    """Each key's share of the requests: its capacity's share (equal where one is unknown)."""
    rates = [k.per_minute(charge) for k in keys]
    if not keys:
        return []
    if any(r is None for r in rates) or not sum(r for r in rates if r is not None):
        return [1.0 / len(keys)] * len(keys)
    total = sum(r for r in rates if r is not None)
    return [(r or 0.0) / total for r in rates]
