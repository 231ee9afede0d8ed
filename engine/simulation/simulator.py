"""An OpenAI-compatible provider on loopback, for demos, tests and benchmarks.

It answers `POST /v1/chat/completions`, `POST /v1/embeddings` and
`GET /v1/models` the way the real API does where the engine can tell the
difference: per-key requests and tokens buckets with OpenAI's 429 bodies and
`retry-after` / `x-ratelimit-*` headers, `insufficient_quota`, `401
invalid_api_key`, realistic latency, and injected faults (5xx, connection
resets, hangs, malformed bodies, missing ids), all decided by one seeded RNG.

A chat request's last user message carries `[id=<id>] <text>` lines; the
answer's content is `{"results": [{"id": ..., "summary": ...}]}` with one
deterministic summary per id, in order.  A prompt whose instructions ask
for `"items": [...]` also gets a deterministic list of words per id.

It drifts on cue: from chat answer number `drift_after` on, answers change
in the ways `drift` names (shorter, malformed, missing ids, refusals, fewer
items, slower, slightly slower, faster, embeddings elsewhere, or a share of
chat requests failing with a 5xx), until answer `drift_until`
if that is set, for demos and tests of the drift monitor and its gates.
Outside that span every answer is what it would be without drift.

`GET /_sim/stats` (no key needed) returns the counters as JSON, for runs
where the simulator lives in another process; keys appear in it only as
their masked hints.

Run it alone with `python -m engine.simulation.simulator --key SECRET:RPM:TPM ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import math
import os
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from aiohttp import web

from engine.config.settings import LATENCY_DISTRIBUTIONS, SIMULATED_DRIFTS
from engine.provider.redaction import mask_secret
from engine.simulation.batch_api import BatchFaults, BatchLineError, SimulatedBatchApi
from engine.simulation.rate_buckets import FULL_MINUTE_S, Admission, KeyBudget, format_duration

# "429": a rate-limit refusal whatever the budget, as from a provider that will not serve.
FAULT_KINDS: tuple[str, ...] = ("5xx", "reset", "hang", "malformed", "missing_id", "429")

# One list of drift kinds for the job settings and the simulator.
DRIFT_KINDS: tuple[str, ...] = SIMULATED_DRIFTS

# Faults that make sense for an embeddings request (it has no ids to drop).
_EMBEDDING_FAULTS: tuple[str, ...] = ("5xx", "reset", "hang", "malformed", "429")
# What a "429" fault asks the client to wait: short, as a provider near its limit says.
_FAULT_RETRY_AFTER_S = 0.02

_MODELS_CREATED = 1_700_000_000

# A lognormal latency puts `latency_s`'s low and high at its 5th and 95th percentiles.
_Z_95 = 1.6448536269514722


@dataclass(frozen=True, slots=True)
class SimKey:
    """A key the simulator knows.  A limit of None means no limit on that axis
    (and no `x-ratelimit-*` headers for it)."""

    secret: str
    rpm: int | None
    tpm: int | None
    quota_exhausted: bool = False


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulated provider behaves.

    Unknown secrets are refused with 401 unless `default_rpm` or
    `default_tpm` is set; then each unknown secret gets its own buckets with
    those limits.  Every key's buckets hold `burst_s` seconds of its limits
    (60: a full minute, as OpenAI's; 1: the minute enforced per second).
    Fault rates are per-request probabilities, checked in the order of
    `FAULT_KINDS`; the first that fires decides the request.

    Latency is drawn between `latency_s`'s low and high: uniformly, or
    lognormally with low and high as its 5th and 95th percentiles (most
    answers quick, a long tail of slow ones, as real providers answer).

    From chat answer number `drift_after` on (0: never; every 200 answer,
    faulty or not, counted in the order they are composed, across all keys;
    embeddings requests drift once chat answers have), each kind in `drift`
    (from `DRIFT_KINDS`) applies, decided by the seed and the answer's
    number only; from answer `drift_until` on (0: never) drift ends again.
    Injected faults still apply on top.
    """

    keys: tuple[SimKey, ...] = ()
    default_rpm: int | None = None
    default_tpm: int | None = None
    latency_s: tuple[float, float] = (0.0, 0.0)
    latency_distribution: str = "uniform"  # one of LATENCY_DISTRIBUTIONS
    burst_s: float = FULL_MINUTE_S
    seconds_per_output_token: float = 0.0
    fault_5xx: float = 0.0
    fault_reset: float = 0.0
    fault_hang: float = 0.0
    fault_malformed: float = 0.0
    fault_missing_id: float = 0.0
    fault_429: float = 0.0
    hang_s: float = 3600.0
    # Up to this many seconds (uniform) between a request's arrival and its bucket:
    # a network path's jitter, so requests meet the buckets out of the order sent.
    arrival_jitter_s: float = 0.0
    seed: int = 1
    embedding_dim: int = 64
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
    # Some providers send no x-ratelimit-* headers at all; the engine must cope.
    rate_headers: bool = True
    drift_after: int = 0
    drift: tuple[str, ...] = ()
    drift_until: int = 0
    # The Batch API (`batch_api`): seconds until a batch completes, and its faults.
    batch_delay_s: float = 3.0
    batch_fault_line: float = 0.0
    batch_fault_fail: float = 0.0
    batch_fault_expire: float = 0.0
    batch_fault_stuck: float = 0.0
    batch_fault_poll: float = 0.0
    # (input, output) US dollars per million tokens: each answer's usage then says
    # what it cost (`usage.cost`), as OpenRouter's do.  None: no cost is reported.
    cost_per_m: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.batch_faults()  # checks them
        low, high = self.latency_s
        if not 0 <= low <= high:
            raise ValueError(
                f"latency_s must be (low, high) with 0 <= low <= high, got {self.latency_s}"
            )
        if self.latency_distribution not in LATENCY_DISTRIBUTIONS:
            raise ValueError(
                f"latency_distribution must be one of {', '.join(LATENCY_DISTRIBUTIONS)}, "
                f"got {self.latency_distribution!r}"
            )
        if self.latency_distribution == "lognormal" and high > 0 and low <= 0:
            raise ValueError("a lognormal latency needs a low above 0 (its 5th percentile)")
        if not 0 < self.burst_s <= FULL_MINUTE_S:
            raise ValueError(f"burst_s must be more than 0 and at most 60, got {self.burst_s}")
        if self.seconds_per_output_token < 0 or self.hang_s < 0 or self.arrival_jitter_s < 0:
            raise ValueError(
                "seconds_per_output_token, hang_s and arrival_jitter_s must not be negative"
            )
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {self.embedding_dim}")
        for kind in FAULT_KINDS:
            rate = self.fault_rate(kind)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault_{kind} must be a probability in [0, 1], got {rate}")
        if self.drift_after < 0:
            raise ValueError(f"drift_after must not be negative, got {self.drift_after}")
        if self.cost_per_m is not None and min(self.cost_per_m) < 0:
            raise ValueError(f"cost_per_m must not be negative, got {self.cost_per_m}")
        if self.drift_until < 0:
            raise ValueError(f"drift_until must not be negative, got {self.drift_until}")
        unknown = [kind for kind in self.drift if kind not in DRIFT_KINDS]
        if unknown:
            raise ValueError(
                f"unknown drift {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(DRIFT_KINDS)}"
            )

    def batch_faults(self) -> BatchFaults:
        """The Batch API's delay and faults."""
        return BatchFaults(
            self.batch_delay_s,
            self.batch_fault_line,
            self.batch_fault_fail,
            self.batch_fault_expire,
            self.batch_fault_stuck,
            self.batch_fault_poll,
        )

    def fault_rate(self, kind: str) -> float:
        """The probability of fault `kind` (one of `FAULT_KINDS`)."""
        return float(getattr(self, f"fault_{kind}"))

    @property
    def accepts_unknown_keys(self) -> bool:
        return self.default_rpm is not None or self.default_tpm is not None


@dataclass(slots=True)
class SimulatorStats:
    """Live counters; read them, don't write them.  `as_dict()` copies them.

    `requests` counts everything that reached a handler; `requests_by_key`
    only authenticated ones.  `answers` counts chat answers sent (200s with a
    body, faulty or not), `drifted_answers` those of them that drifted.
    `completions_ok` counts answers with no injected fault and no drifted
    malformation or dropped id.  `chunk_ids_answered` counts ids in complete,
    parseable results (a dropped id or a malformed answer does not count).
    `admitted` counts requests the buckets let through and `tokens_charged`
    what they took from the tokens bucket (prompt estimate + `max_tokens`),
    so `tokens_charged / admitted` is what a request costs against the TPM.
    `chunks_received` counts the `[id=…]` chunks in admitted chat requests
    and `distinct_texts_received` the different texts among them, so the two
    are equal when no text was ever sent twice.
    """

    requests: int = 0
    requests_by_key: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0  # 429 rate_limit_exceeded
    rate_limited_by_kind: dict[str, int] = field(
        default_factory=lambda: {"requests": 0, "tokens": 0}
    )
    quota_rejected: int = 0  # 429 insufficient_quota
    unauthorized: int = 0
    bad_requests: int = 0
    admitted: int = 0
    tokens_charged: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    completions_ok: int = 0
    embeddings_ok: int = 0
    chunk_ids_answered: int = 0
    chunks_received: int = 0
    distinct_texts_received: int = 0
    answers: int = 0
    drifted_answers: int = 0

    @property
    def too_many_requests(self) -> int:
        """Every 429, whatever the reason."""
        return self.rate_limited + self.quota_rejected

    def as_dict(self) -> dict[str, Any]:
        """A deep copy, safe to keep or serialise."""
        return asdict(self)


# --- answers ------------------------------------------------------------------------------

_CHUNK_START = re.compile(r"\[id=([^\]\s]+)\][ \t]?(.*)")
_WORD = re.compile(r"\w+")
_FILLER_WORDS = ("notes", "records", "details", "context", "material", "remarks", "points")
_SUMMARY_LEAD = ("This", "passage", "covers")
_MIN_SUMMARY_WORDS = 8
_ITEMS_ASKED = re.compile(r'"items"\s*:')
_ITEM_WORD = re.compile(r"\w{4,}")
_MIN_ITEMS, _MAX_ITEMS = 2, 8


def estimate_tokens(text_bytes: int) -> int:
    """OpenAI-style rough count: one token per four UTF-8 bytes, rounded up."""
    return -(-text_bytes // 4)


def _content_text(content: Any) -> str:
    """A message's text, whether it is a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def parse_chunks(text: str) -> list[tuple[str, str]]:
    """The `(id, text)` pairs in a prompt: a chunk starts at a line beginning
    `[id=<id>]` and runs until the next such line."""
    chunks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        start = _CHUNK_START.match(line)
        if start is not None:
            chunks.append((start.group(1), [start.group(2)]))
        elif chunks:
            chunks[-1][1].append(line)
    return [(chunk_id, "\n".join(lines).strip()) for chunk_id, lines in chunks]


def summarize(text: str) -> str:
    """A deterministic sentence of 8 to 30 words built from the text's words.

    Its length comes from a hash of the text; a text too short to fill it
    gives a shorter sentence, padded with filler words up to eight.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    length = 8 + int.from_bytes(digest[:4], "little") % 23
    words = _WORD.findall(text)[: length - len(_SUMMARY_LEAD)]
    padding = _FILLER_WORDS[: max(0, _MIN_SUMMARY_WORDS - len(_SUMMARY_LEAD) - len(words))]
    return " ".join((*_SUMMARY_LEAD, *words, *padding)) + "."


def extract_items(text: str) -> list[str]:
    """2 to 8 distinct words of four letters or more from the text, in order.

    How many comes from the same hash as `summarize` (its other half); a
    text with fewer such words gives fewer items.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    count = _MIN_ITEMS + int.from_bytes(digest[4:], "little") % (_MAX_ITEMS - _MIN_ITEMS + 1)
    distinct = dict.fromkeys(word.lower() for word in _ITEM_WORD.findall(text))
    return list(distinct)[:count]


def embed(text: str, dim: int) -> np.ndarray:
    """A unit vector of `dim` float32s that depends only on the text.

    Like a real model's, the vectors of one job's texts share a common
    direction (cosine ~0.7 between any two), so their centroid is stable and
    a drift moves it; purely random directions would make any two sets of
    texts look far apart.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    noise = np.random.default_rng(int.from_bytes(digest, "little")).standard_normal(dim)
    vector = _common_direction(dim) + _TEXT_SPREAD * noise / np.linalg.norm(noise)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


_TEXT_SPREAD = 0.65  # how far each text's vector strays from the common direction


@functools.cache
def _common_direction(dim: int) -> np.ndarray:
    vector = np.random.default_rng(20261124).standard_normal(dim)
    return vector / np.linalg.norm(vector)


def answer_results(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the simulated model says of each chunk in `messages` (before faults and
    drift): its id, a summary, and items when the prompt asks for them."""
    prompt_text = [_content_text(m.get("content")) for m in messages]
    last_user = next(
        (
            text
            for m, text in zip(reversed(messages), reversed(prompt_text), strict=True)
            if m.get("role") == "user"
        ),
        "",
    )
    with_items = _asks_for_items(prompt_text)
    return [
        {
            "id": cid,
            "summary": summarize(text),
            **({"items": extract_items(text)} if with_items else {}),
        }
        for cid, text in parse_chunks(last_user)
    ]


def answer_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """The completion tokens of the simulated model's plain answer to `messages`."""
    content = json.dumps({"results": answer_results(messages)}, ensure_ascii=False)
    return estimate_tokens(len(content.encode("utf-8")))


def _asks_for_items(prompt_text: Sequence[str]) -> bool:
    """Whether the prompt's requested shape has an "items" list."""
    # The whole prompt is searched, as the shape may follow the chunks; a
    # chunk that quotes `"items":` is rare enough to be worth this simplicity.
    return any(_ITEMS_ASKED.search(text) for text in prompt_text)


def draw_latency(rng: random.Random, latency_s: tuple[float, float], distribution: str) -> float:
    """One answer's base latency: uniform in `latency_s`, or lognormal with its
    ends as the 5th and 95th percentiles.  0 when the range's high is 0."""
    low, high = latency_s
    if high <= 0.0:
        return 0.0
    if distribution == "lognormal":
        mu = (math.log(low) + math.log(high)) / 2
        sigma = (math.log(high) - math.log(low)) / (2 * _Z_95)
        return rng.lognormvariate(mu, sigma)
    return rng.uniform(low, high)


# --- drift --------------------------------------------------------------------------------

# How strongly each drift shows once it starts.
_SHORTER_KEEP = 0.6  # a summary keeps this share of its words
_MALFORMED_SHARE = 0.4  # of answers
_MISSING_IDS_SHARE = 0.5  # of answers
_REFUSAL_SHARE = 0.15  # of chunk entries
_SLOWER_FACTOR = 2.5
_FASTER_FACTOR = 0.7  # the median latency 0.118 → 0.085 s a real provider once showed
_SLIGHTLY_SLOWER_FACTOR = 1.3  # a provider's busy hour: no drift worth slowing a job for
_EMBEDDING_PULL = 2.0  # weight of the fixed direction added to each vector
_SERVER_ERROR_SHARE = 0.25  # of chat requests: a provider overloaded, not down
REFUSAL_TEXT = "I'm sorry, but I can't help with that."


def _drift_rng(seed: int, kind: str, number: int) -> random.Random:
    # A stream per kind and answer: a drift's choices depend on neither the
    # order requests interleave in nor which other drifts are on, and the
    # main RNG (faults, latency) draws exactly what it would without drift.
    return random.Random(f"drift/{seed}/{kind}/{number}")


def shorten(summary: str) -> str:
    """The summary's first 60% of words (at least two), as a sentence."""
    words = summary.rstrip(".").split()
    return " ".join(words[: max(2, round(len(words) * _SHORTER_KEEP))]) + "."


def _drift_results(
    results: list[dict[str, Any]], kinds: Sequence[str], seed: int, number: int
) -> tuple[list[dict[str, Any]], int]:
    """Answer number `number`'s entries changed by `kinds`; and how many ids were left out."""
    if "shorter" in kinds:
        results = [{**entry, "summary": shorten(entry["summary"])} for entry in results]
    if "fewer_items" in kinds:
        results = [
            {**entry, "items": entry["items"][: len(entry["items"]) // 2]}
            if "items" in entry
            else entry
            for entry in results
        ]
    if "refusals" in kinds:
        rng = _drift_rng(seed, "refusals", number)
        results = [
            {
                "id": entry["id"],
                "summary": REFUSAL_TEXT,
                **({"items": []} if "items" in entry else {}),
            }
            if rng.random() < _REFUSAL_SHARE
            else entry
            for entry in results
        ]
    dropped = 0
    if "missing_ids" in kinds and results:
        rng = _drift_rng(seed, "missing_ids", number)
        if rng.random() < _MISSING_IDS_SHARE:
            # At most half of a batch, so most answers stay usable; a batch of one loses it.
            dropped = 1 + rng.randrange(max(1, len(results) // 2))
            gone = set(rng.sample(range(len(results)), dropped))
            results = [entry for index, entry in enumerate(results) if index not in gone]
    return results, dropped


def _malformed_content(results: list[dict[str, Any]], seed: int, number: int) -> str | None:
    """Content that is not the expected JSON for ~40% of answers; None for the rest."""
    rng = _drift_rng(seed, "malformed", number)
    if rng.random() >= _MALFORMED_SHARE:
        return None
    variant = rng.randrange(3)
    if variant == 0:  # chatty prose instead of JSON
        return "Here are the summaries:\n" + "\n".join(
            f"* {entry['id']}: {entry.get('summary', '')}" for entry in results
        )
    whole = json.dumps({"results": results}, ensure_ascii=False)
    if variant == 1:  # JSON that stops halfway
        return whole[: len(whole) // 2]
    return json.dumps({"answer": results}, ensure_ascii=False)  # JSON of the wrong shape


def _drifted_embedding(vector: np.ndarray, seed: int) -> np.ndarray:
    """The vector pulled toward a fixed direction (per seed and dimension), renormalised."""
    # A direction of its own, not a text's: texts share the common direction.
    direction = np.random.default_rng([seed, 7919]).standard_normal(vector.size)
    direction /= np.linalg.norm(direction)
    moved = vector.astype(np.float64) + _EMBEDDING_PULL * direction
    return (moved / np.linalg.norm(moved)).astype(np.float32)


def _error_body(
    message: str, type_: str, code: str | int | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _masked(secret: str) -> str:
    return f"{secret[:3]}***{secret[-4:]}" if len(secret) > 8 else "***"


class _BadRequest(Exception):
    """A request body the API would refuse with 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class _Caller:
    """An authenticated key and its buckets."""

    secret: str
    budget: KeyBudget
    quota_exhausted: bool


@dataclass(slots=True)
class _Composed:
    """A chat answer composed, before it is sent: its body and what it came to."""

    completion: dict[str, Any]
    completion_tokens: int
    kinds: tuple[str, ...]  # the drifts applied
    drifts: bool
    fault: str | None
    not_json: bool
    truncated_body: bool
    malformed: bool
    dropped: bool
    cut_short: bool  # stopped at max_tokens
    ids: int  # results in it


# Builds the 200 answer for an admitted request: (request, body, headers so far).
_Answer = Callable[[web.BaseRequest, dict[str, Any], dict[str, str]], Awaitable[web.StreamResponse]]


# --- the server ---------------------------------------------------------------------------


class ProviderSimulator:
    """The simulated provider.  `start()` serves it; `stop()` ends it promptly,
    dropping hung and in-flight requests like a provider going away.

    `clock` (monotonic seconds) drives the rate-limit buckets only; latency
    and hangs always use the event loop's real time.
    """

    def __init__(
        self, config: SimulatorConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock  # rate-limit time only; tests inject one to skip waiting
        self.stats = SimulatorStats()
        self._rng = random.Random(config.seed)
        self._callers: dict[str, _Caller] = {}
        now = self._clock()
        for key in config.keys:
            self._callers[key.secret] = _Caller(
                key.secret, KeyBudget(key.rpm, key.tpm, now, config.burst_s), key.quota_exhausted
            )
        self._runner: web.ServerRunner | None = None
        self._closing: asyncio.Future[None] | None = None
        self._base_url: str | None = None
        self._completion_seq = 0
        self._answers_numbered = 0  # chat answers composed: the drift's clock
        self._server_error_draws = 0  # chat requests that drew for a drifted 5xx
        self.batches = SimulatedBatchApi(self, config.batch_faults(), config.seed)
        self._texts_received: set[bytes] = set()  # digests: 16 bytes a text, not the text

    @property
    def config(self) -> SimulatorConfig:
        """The current configuration (fault rates may change while serving)."""
        return self._config

    @property
    def drifting(self) -> bool:
        """True once drift has begun: the next chat answer (and every later one) drifts."""
        return self._drifts(self._answers_numbered + 1)

    def _drifts(self, answer_number: int) -> bool:
        config = self._config
        return (
            config.drift_after > 0
            and bool(config.drift)
            and answer_number >= config.drift_after
            and not 0 < config.drift_until <= answer_number
        )

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1`; only while serving."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not serving")
        return self._base_url

    def set_faults(
        self,
        *,
        fault_5xx: float | None = None,
        fault_reset: float | None = None,
        fault_hang: float | None = None,
        fault_malformed: float | None = None,
        fault_missing_id: float | None = None,
        fault_429: float | None = None,
        hang_s: float | None = None,
    ) -> None:
        """Change fault rates while serving; arguments left as None keep their value."""
        given: dict[str, Any] = {
            "fault_5xx": fault_5xx,
            "fault_reset": fault_reset,
            "fault_hang": fault_hang,
            "fault_malformed": fault_malformed,
            "fault_missing_id": fault_missing_id,
            "fault_429": fault_429,
            "hang_s": hang_s,
        }
        # replace() re-runs validation, so a bad rate is refused before it applies.
        self._config = replace(self._config, **{k: v for k, v in given.items() if v is not None})

    def set_batch_faults(self, **changes: float) -> None:
        """Change the Batch API's delay (`batch_delay_s`) or faults (`batch_fault_*`)."""
        wrong = [name for name in changes if not name.startswith("batch_")]
        if wrong:
            raise TypeError(f"not a Batch API setting: {', '.join(wrong)}")
        self._config = replace(self._config, **changes)  # type: ignore[arg-type]
        self.batches.faults = self._config.batch_faults()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0: any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already serving")
        self._closing = asyncio.get_running_loop().create_future()
        # handler_cancellation: a client that gives up on a hung request frees its handler.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._base_url = f"http://{bound_host}:{bound_port}/v1"
        return self._base_url

    async def stop(self) -> None:
        """Stop listening and end every open request.  Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)  # wakes sleeping handlers, which drop their connections
        await runner.cleanup()
        self._base_url = None

    async def __aenter__(self) -> ProviderSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- request handling ---------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.stats.requests += 1
        request_id = f"req_{uuid.uuid4().hex}"
        method, path = request.method, request.path.rstrip("/")
        if method == "POST" and path == "/v1/chat/completions":
            return await self._serve_api(
                request, request_id, self._chat_cost, self._chat_completion
            )
        if method == "POST" and path == "/v1/embeddings":
            return await self._serve_api(
                request, request_id, self._embedding_cost, self._embeddings
            )
        if SimulatedBatchApi.serves(method, path):
            caller = self._authenticate(request)
            if caller is None:
                return self._unauthorized(request, request_id)
            headers = {"x-request-id": request_id}
            return await self.batches.handle(
                request, caller.secret, lambda status, body: self._json(status, body, headers)
            )
        if method == "GET" and path == "/v1/models":
            caller = self._authenticate(request)
            if caller is None:
                return self._unauthorized(request, request_id)
            return self._json(200, self._models(), {"x-request-id": request_id})
        if method == "GET" and path == "/_sim/stats":
            served = {
                **self.stats.as_dict(),
                "drifting": self.drifting,
                "batch_api": asdict(self.batches.stats),
            }
            # Anyone who can reach the port may ask: keys only by their hints
            # (a job pointed at `crawldeck simulate` sends its real keys).
            by_hint: dict[str, int] = {}
            for secret, count in self.stats.requests_by_key.items():
                by_hint[mask_secret(secret)] = by_hint.get(mask_secret(secret), 0) + count
            served["requests_by_key"] = by_hint
            return self._json(200, served, {"x-request-id": request_id})
        return self._json(
            404,
            _error_body(f"Invalid URL ({method} {request.path})", "invalid_request_error", None),
            {"x-request-id": request_id},
        )

    async def _serve_api(
        self,
        request: web.BaseRequest,
        request_id: str,
        cost: Callable[[dict[str, Any]], int],
        answer: _Answer,
    ) -> web.StreamResponse:
        """Authenticate, check quota, parse, admit; then let `answer` respond."""
        caller = self._authenticate(request)
        if caller is None:
            return self._unauthorized(request, request_id)
        by_key = self.stats.requests_by_key
        by_key[caller.secret] = by_key.get(caller.secret, 0) + 1
        if caller.quota_exhausted:
            self.stats.quota_rejected += 1
            headers = {"x-request-id": request_id, **self._limit_headers(caller, self._clock())}
            message = (
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors."
            )
            return self._json(
                429, _error_body(message, "insufficient_quota", "insufficient_quota"), headers
            )
        try:
            body = await self._read_body(request)
            token_cost = cost(body)
        except _BadRequest as bad:
            self.stats.bad_requests += 1
            headers = {"x-request-id": request_id, **self._limit_headers(caller, self._clock())}
            return self._json(
                400, _error_body(str(bad), "invalid_request_error", None, bad.param), headers
            )
        jitter = self._config.arrival_jitter_s
        if jitter > 0.0:
            await asyncio.sleep(self._rng.uniform(0.0, jitter))
        now = self._clock()
        admission = caller.budget.admit(token_cost, now)
        headers = {"x-request-id": request_id, **self._limit_headers(caller, now)}
        if not admission.admitted:
            return self._rate_limited(admission, str(body.get("model", "")), headers)
        self.stats.admitted += 1
        self.stats.tokens_charged += token_cost
        return await answer(request, body, headers)

    def _limit_headers(self, caller: _Caller, now: float) -> dict[str, str]:
        return caller.budget.headers(now) if self._config.rate_headers else {}

    def _authenticate(self, request: web.BaseRequest) -> _Caller | None:
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            return None
        caller = self._callers.get(secret)
        if caller is None and self._config.accepts_unknown_keys:
            config = self._config
            budget = KeyBudget(
                config.default_rpm, config.default_tpm, self._clock(), config.burst_s
            )
            caller = self._callers[secret] = _Caller(secret, budget, quota_exhausted=False)
        return caller

    def _unauthorized(self, request: web.BaseRequest, request_id: str) -> web.Response:
        self.stats.unauthorized += 1
        _, _, secret = request.headers.get("Authorization", "").partition(" ")
        secret = secret.strip()
        if secret:
            message = (
                f"Incorrect API key provided: {_masked(secret)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
        else:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        return self._json(
            401,
            _error_body(message, "invalid_request_error", "invalid_api_key"),
            {"x-request-id": request_id},
        )

    def _rate_limited(
        self, admission: Admission, model: str, headers: dict[str, str]
    ) -> web.Response:
        kind = admission.limited_by or "requests"
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        self.stats.rate_limited += 1
        self.stats.rate_limited_by_kind[kind] += 1
        if admission.retry_after_s is None:
            message = (
                f"Request too large for {model} in organization org-simulator on {unit}: "
                f"Limit {admission.limit}, Requested {admission.requested}. The input or output "
                "tokens must be reduced in order to run successfully. "
                "Visit https://platform.openai.com/account/rate-limits to learn more."
            )
        else:
            wait = admission.retry_after_s
            message = (
                f"Rate limit reached for {model} in organization org-simulator on {unit}: "
                f"Limit {admission.limit}, Used {admission.used}, Requested {admission.requested}. "
                f"Please try again in {format_duration(wait)}. "
                "Visit https://platform.openai.com/account/rate-limits to learn more."
            )
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return self._json(429, _error_body(message, kind, "rate_limit_exceeded"), headers)

    @staticmethod
    async def _read_body(request: web.BaseRequest) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise _BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest("The request body must be a JSON object.")
        if not isinstance(body.get("model"), str):
            raise _BadRequest("you must provide a model parameter", "model")
        return body

    @staticmethod
    def _max_tokens(body: dict[str, Any]) -> int | None:
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _BadRequest(f"Invalid '{name}': expected an integer of at least 1.", name)
            return value
        return None

    def _chat_cost(self, body: dict[str, Any]) -> int:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("'messages' must be a non-empty array.", "messages")
        if not all(isinstance(m, dict) for m in messages):
            raise _BadRequest("Each message must be an object.", "messages")
        prompt_bytes = sum(len(_content_text(m.get("content")).encode("utf-8")) for m in messages)
        return estimate_tokens(prompt_bytes) + (self._max_tokens(body) or 0)

    def _embedding_cost(self, body: dict[str, Any]) -> int:
        return estimate_tokens(
            sum(len(text.encode("utf-8")) for text in self._embedding_inputs(body))
        )

    @staticmethod
    def _embedding_inputs(body: dict[str, Any]) -> list[str]:
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(t, str) for t in inputs)
        ):
            raise _BadRequest("'input' must be a string or a non-empty array of strings.", "input")
        return inputs

    def _draw_fault(self, kinds: Sequence[str]) -> str | None:
        config = self._config
        for kind in kinds:
            rate = config.fault_rate(kind)
            # Skipping zero rates keeps the RNG untouched (and the fast path fast).
            if rate > 0.0 and self._rng.random() < rate:
                return kind
        return None

    def _drifted_server_error(self) -> bool:
        """Whether this chat request fails with a 5xx for a "server_errors" drift.

        The span is the answers' (a failed request composes none, so the
        drift still ends at `drift_until`); each request while it lasts
        draws from a stream of its own, as every drift does.
        """
        if "server_errors" not in self._config.drift or not self.drifting:
            return False
        self._server_error_draws += 1
        rng = _drift_rng(self._config.seed, "server_errors", self._server_error_draws)
        return rng.random() < _SERVER_ERROR_SHARE

    def _base_latency(self) -> float:
        config = self._config
        return draw_latency(self._rng, config.latency_s, config.latency_distribution)

    async def _sleep_unless_closing(self, seconds: float) -> bool:
        """Sleep; False if the simulator began stopping meanwhile."""
        closing = self._closing
        assert closing is not None
        if closing.done():
            return False
        try:
            async with asyncio.timeout(seconds):
                # shield: many handlers await one future; a timeout must not cancel it.
                await asyncio.shield(closing)
        except TimeoutError:
            return True
        return False

    async def _fault_response(
        self, request: web.BaseRequest, fault: str, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        """Respond for a transport-level fault; None for faults shaped later."""
        if fault == "hang":
            await self._sleep_unless_closing(self._config.hang_s)
            return self._drop(request)
        if fault == "429":
            return self._refused_anyway(headers)
        if fault not in ("reset", "5xx"):
            return None  # shaped into the answer by the caller
        delay = self._base_latency()
        if delay > 0.0 and not await self._sleep_unless_closing(delay):
            return self._drop(request)
        if fault == "reset":
            return self._drop(request)
        status = self._rng.choice((500, 502, 503))
        return self._json(status, _SERVER_ERRORS[status], headers)

    def _refused_anyway(self, headers: dict[str, str]) -> web.Response:
        """A 429 rate_limit_exceeded that no wait would have avoided."""
        self.stats.rate_limited += 1
        self.stats.rate_limited_by_kind["requests"] += 1
        wait = format_duration(_FAULT_RETRY_AFTER_S)
        message = (
            "Rate limit reached for requests in organization org-simulator on requests per min "
            f"(RPM). Please try again in {wait}."
        )
        headers["retry-after-ms"] = str(math.ceil(_FAULT_RETRY_AFTER_S * 1000))
        headers["retry-after"] = "1"
        return self._json(429, _error_body(message, "requests", "rate_limit_exceeded"), headers)

    @staticmethod
    def _drop(request: web.BaseRequest) -> web.Response:
        """Close the connection without a response, as a crashed upstream would."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=500)  # never sent: the transport is gone

    async def _chat_completion(
        self,
        request: web.BaseRequest,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        started = time.monotonic()
        config = self._config
        self._count_received(body)
        fault = self._draw_fault(FAULT_KINDS)
        if fault is None and self._drifted_server_error():
            fault = "5xx"
        if fault is not None:
            self.stats.faults[fault] += 1
            early = await self._fault_response(request, fault, headers)
            if early is not None:
                return early

        composed = self._compose_answer(body, fault)
        delay = self._base_latency() + config.seconds_per_output_token * composed.completion_tokens
        kinds = composed.kinds
        if "slower" in kinds:
            delay *= _SLOWER_FACTOR
        if "faster" in kinds:
            delay *= _FASTER_FACTOR
        if "slightly_slower" in kinds:
            delay *= _SLIGHTLY_SLOWER_FACTOR
        if delay > 0.0:
            delay *= self._rng.uniform(0.9, 1.1)
            if not await self._sleep_unless_closing(delay):
                return self._drop(request)

        headers["openai-processing-ms"] = str(round((time.monotonic() - started) * 1000))
        payload = json.dumps(self._count_answer(composed), ensure_ascii=False).encode("utf-8")
        if composed.truncated_body:
            return self._raw_json(200, payload[: len(payload) // 2], headers)
        return self._raw_json(200, payload, headers)

    def answer_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat completion for `body`, composed and counted as an online answer is, but
        at once and with no injected fault: a batch line's answer (`batch_api`).

        `body` must have passed the online request's checks (`check_chat_body`)."""
        return self._count_answer(self._compose_answer(body, None))

    def check_chat_body(self, body: object) -> None:
        """Raise `BatchLineError` unless `body` is a chat request the online endpoint takes."""
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise BatchLineError("you must provide a model parameter", "model")
        try:
            self._chat_cost(body)
        except _BadRequest as bad:
            raise BatchLineError(str(bad), bad.param) from None

    def _count_answer(self, composed: _Composed) -> dict[str, Any]:
        """Number and count a composed answer as sent; its completion body."""
        self._completion_seq += 1
        composed.completion["id"] = f"chatcmpl-sim{self._config.seed:x}x{self._completion_seq:012x}"
        self.stats.answers += 1
        self.stats.drifted_answers += int(composed.drifts)
        if not composed.truncated_body:
            if composed.fault is None and not composed.malformed and not composed.dropped:
                self.stats.completions_ok += 1
            if not composed.not_json and not composed.malformed and not composed.cut_short:
                self.stats.chunk_ids_answered += composed.ids
        return composed.completion

    def _count_received(self, body: dict[str, Any]) -> None:
        messages: list[dict[str, Any]] = body["messages"]
        users = (m.get("content") for m in reversed(messages) if m.get("role") == "user")
        chunks = parse_chunks(_content_text(next(users, "")))
        self.stats.chunks_received += len(chunks)
        for _chunk_id, text in chunks:
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if digest not in self._texts_received:
                self._texts_received.add(digest)
                self.stats.distinct_texts_received += 1

    def _compose_answer(self, body: dict[str, Any], fault: str | None) -> _Composed:
        """What the model says to `body` (with `fault`, drift by the answer's number)."""
        config = self._config
        messages: list[dict[str, Any]] = body["messages"]
        prompt_text = [_content_text(m.get("content")) for m in messages]
        prompt_tokens = estimate_tokens(sum(len(t.encode("utf-8")) for t in prompt_text))
        results = answer_results(messages)
        if fault == "missing_id" and results:
            del results[self._rng.randrange(len(results))]
        not_json = fault == "malformed" and self._rng.random() < 0.5
        truncated_body = fault == "malformed" and not not_json

        self._answers_numbered += 1
        number = self._answers_numbered
        drifts = self._drifts(number)
        kinds = config.drift if drifts else ()
        results, dropped = _drift_results(results, kinds, config.seed, number)
        malformed = None
        if "malformed" in kinds and not not_json:
            malformed = _malformed_content(results, config.seed, number)

        if not_json:
            content = "Sure! Here is what each chunk says:\n" + "\n".join(
                f"- {r['id']}: {r['summary']}" for r in results
            )
        elif malformed is not None:
            content = malformed
        else:
            content = json.dumps({"results": results}, ensure_ascii=False)

        completion_tokens = estimate_tokens(len(content.encode("utf-8")))
        finish_reason = "stop"
        max_tokens = self._max_tokens(body)
        if max_tokens is not None and completion_tokens > max_tokens:
            # The real API stops mid-answer when the output budget runs out.
            content = content.encode("utf-8")[: max_tokens * 4].decode("utf-8", errors="ignore")
            completion_tokens, finish_reason = max_tokens, "length"

        completion = {
            "id": "",  # numbered when it is sent
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_simulator",
        }
        if config.cost_per_m is not None:
            per_in, per_out = config.cost_per_m
            usage = completion["usage"]
            usage["cost"] = (prompt_tokens * per_in + completion_tokens * per_out) / 1e6
        return _Composed(
            completion,
            completion_tokens,
            kinds,
            drifts,
            fault,
            not_json=not_json,
            truncated_body=truncated_body,
            malformed=malformed is not None,
            dropped=bool(dropped),
            cut_short=finish_reason != "stop",
            ids=len(results),
        )

    async def _embeddings(
        self,
        request: web.BaseRequest,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        fault = self._draw_fault(_EMBEDDING_FAULTS)
        if fault is not None:
            self.stats.faults[fault] += 1
            early = await self._fault_response(request, fault, headers)
            if early is not None:
                return early
        inputs = self._embedding_inputs(body)
        dim = body.get("dimensions") or self._config.embedding_dim
        if not isinstance(dim, int) or dim < 1:
            dim = self._config.embedding_dim
        as_base64 = body.get("encoding_format") == "base64"
        kinds = self._config.drift if self.drifting else ()
        data = []
        for index, text in enumerate(inputs):
            vector = embed(text, dim)
            if "embeddings" in kinds:
                vector = _drifted_embedding(vector, self._config.seed)
            encoded: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if as_base64
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = self._embedding_cost(body)
        delay = self._base_latency() * (_SLOWER_FACTOR if "slower" in kinds else 1.0)
        if delay > 0.0:
            delay *= self._rng.uniform(0.9, 1.1)
            if not await self._sleep_unless_closing(delay):
                return self._drop(request)
        response = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        payload = json.dumps(response).encode("utf-8")
        if fault == "malformed":
            return self._raw_json(200, payload[: len(payload) // 2], headers)
        self.stats.embeddings_ok += 1
        return self._raw_json(200, payload, headers)

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": "system"}
                for model in self._config.models
            ],
        }

    @staticmethod
    def _json(status: int, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
        return ProviderSimulator._raw_json(status, json.dumps(body).encode("utf-8"), headers)

    @staticmethod
    def _raw_json(status: int, payload: bytes, headers: dict[str, str]) -> web.Response:
        return web.Response(
            status=status, body=payload, headers=headers, content_type="application/json"
        )


_SERVER_ERRORS: dict[int, dict[str, Any]] = {
    500: _error_body(
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: _error_body("Bad gateway.", "cf_bad_gateway", 502),
    503: _error_body(
        "The engine is currently overloaded, please try again later.", "server_error", None
    ),
}


# --- running it as a process ---------------------------------------------------------------


async def serve(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled; `on_ready(base_url)` is called once listening."""
    simulator = ProviderSimulator(config)
    base_url = await simulator.start(host, port)
    try:
        if on_ready is not None:
            on_ready(base_url)
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        await simulator.stop()


def _parse_key(text: str) -> SimKey:
    """`SECRET:RPM:TPM`; an empty or `-` limit means no limit on that axis."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise argparse.ArgumentTypeError(f"expected SECRET:RPM:TPM, got {text!r}")
    secret, rpm, tpm = parts
    return SimKey(secret, _parse_limit(rpm), _parse_limit(tpm))


def _parse_limit(text: str) -> int | None:
    if text in ("", "-"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a limit must be a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a limit must be positive, got {value}")
    return value


def _keys_from_json(text: str) -> list[SimKey]:
    """Keys from a JSON list of {"secret", "rpm", "tpm", optional "quota_exhausted"}."""
    entries = json.loads(text)
    if not isinstance(entries, list):
        raise ValueError("expected a JSON list of keys")
    keys = []
    for entry in entries:
        secret, rpm, tpm = entry["secret"], entry.get("rpm"), entry.get("tpm")
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"a key needs a non-empty secret, got {secret!r}")
        for limit in (rpm, tpm):
            if limit is not None and (not isinstance(limit, int) or limit <= 0):
                raise ValueError(f"a limit must be a positive whole number or null, got {limit!r}")
        keys.append(SimKey(secret, rpm, tpm, bool(entry.get("quota_exhausted", False))))
    return keys


def _parse_latency(text: str) -> tuple[float, float]:
    try:
        low, _, high = text.partition(",")
        return (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH seconds, got {text!r}") from None


def _parse_prices(text: str) -> tuple[float, float]:
    try:
        per_in, _, per_out = text.partition(",")
        return (float(per_in), float(per_out))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected IN,OUT dollars per million tokens, got {text!r}"
        ) from None


def _parse_default_limits(text: str) -> tuple[int | None, int | None]:
    rpm, sep, tpm = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected RPM:TPM, got {text!r}")
    return _parse_limit(rpm), _parse_limit(tpm)


def _parse_drift(text: str) -> tuple[str, ...]:
    """`kind[,kind...]` from `DRIFT_KINDS`."""
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in DRIFT_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown drift {', '.join(map(repr, unknown))}; choose from {', '.join(DRIFT_KINDS)}"
        )
    return kinds


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.simulation.simulator",
        description="An OpenAI-compatible provider simulator on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument(
        "--key",
        type=_parse_key,
        action="append",
        default=[],
        metavar="SECRET:RPM:TPM",
        help="a known key and its limits (repeatable); empty or '-' for no limit",
    )
    parser.add_argument(
        "--keys-from-env",
        metavar="VAR",
        help='more keys, as JSON in environment variable VAR: [{"secret": ..., "rpm": ..., '
        '"tpm": ..., "quota_exhausted": false}] (keeps secrets off the command line)',
    )
    parser.add_argument(
        "--quota-exhausted",
        action="append",
        default=[],
        metavar="SECRET",
        help="a --key secret that always gets 429 insufficient_quota (repeatable)",
    )
    parser.add_argument(
        "--default-limits",
        type=_parse_default_limits,
        default=(None, None),
        metavar="RPM:TPM",
        help="accept unknown secrets with these limits (default: refuse them with 401)",
    )
    parser.add_argument("--latency", type=_parse_latency, default=(0.0, 0.0), metavar="LOW,HIGH")
    parser.add_argument(
        "--latency-distribution",
        choices=LATENCY_DISTRIBUTIONS,
        default="uniform",
        help="uniform between LOW and HIGH, or lognormal with them as its 5th/95th percentiles",
    )
    parser.add_argument(
        "--burst-s",
        type=float,
        default=FULL_MINUTE_S,
        metavar="SECONDS",
        help="how many seconds of its per-minute limit a key's bucket holds: 60 (default) a "
        "full minute, 1 the minute enforced per second",
    )
    parser.add_argument("--per-token", type=float, default=0.0, metavar="SECONDS")
    for kind in FAULT_KINDS:
        flag = kind.replace("_", "-")
        parser.add_argument(f"--fault-{flag}", type=float, default=0.0, metavar="P")
    parser.add_argument("--hang-s", type=float, default=3600.0)
    parser.add_argument(
        "--arrival-jitter-s",
        type=float,
        default=0.0,
        metavar="S",
        help="requests meet the buckets up to S seconds late (uniform): out of the order sent",
    )
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit when stdin closes (parent died)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument(
        "--drift-after",
        type=int,
        default=0,
        metavar="N",
        help="from the N-th chat answer on (all keys), apply --drift (default 0: never)",
    )
    parser.add_argument(
        "--drift",
        type=_parse_drift,
        default=(),
        metavar="KIND[,KIND...]",
        help=f"how answers drift: {', '.join(DRIFT_KINDS)}",
    )
    parser.add_argument(
        "--cost-per-m",
        type=_parse_prices,
        default=None,
        metavar="IN,OUT",
        help="report each answer's cost in usage.cost at these dollars per million tokens",
    )
    parser.add_argument(
        "--drift-until",
        type=int,
        default=0,
        metavar="M",
        help="from the M-th chat answer on, drift ends again (default 0: never)",
    )
    parser.add_argument(
        "--batch-delay-s",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long a Batch API batch takes to complete (default 3)",
    )
    for kind, what in (
        ("line", "a batch line fails into the error file"),
        ("fail", "a batch fails validation"),
        ("expire", "a batch expires, half answered"),
        ("stuck", "a batch stays in_progress until cancelled"),
        ("poll", "a look at a batch answers 500"),
    ):
        parser.add_argument(
            f"--batch-fault-{kind}", type=float, default=0.0, metavar="P", help=f"P that {what}"
        )
    return parser


def config_from_args(argv: Sequence[str]) -> tuple[SimulatorConfig, str, int]:
    """The config, host and port that these command-line arguments describe."""
    parser = _argument_parser()
    args = parser.parse_args(list(argv))
    given: list[SimKey] = list(args.key)
    if args.keys_from_env:
        try:
            given += _keys_from_json(os.environ.get(args.keys_from_env, ""))
        except (ValueError, TypeError, KeyError) as exc:
            parser.error(f"--keys-from-env {args.keys_from_env}: {exc}")
    exhausted = set(args.quota_exhausted)
    unknown = exhausted - {key.secret for key in given}
    if unknown:
        parser.error(f"--quota-exhausted names secrets that are not a --key: {sorted(unknown)}")
    keys = tuple(
        replace(key, quota_exhausted=True) if key.secret in exhausted else key for key in given
    )
    faults = {f"fault_{kind}": getattr(args, f"fault_{kind}") for kind in FAULT_KINDS}
    try:
        config = SimulatorConfig(
            keys=keys,
            default_rpm=args.default_limits[0],
            default_tpm=args.default_limits[1],
            latency_s=args.latency,
            latency_distribution=args.latency_distribution,
            burst_s=args.burst_s,
            seconds_per_output_token=args.per_token,
            hang_s=args.hang_s,
            arrival_jitter_s=args.arrival_jitter_s,
            seed=args.seed,
            embedding_dim=args.embedding_dim,
            drift_after=args.drift_after,
            drift=args.drift,
            drift_until=args.drift_until,
            batch_delay_s=args.batch_delay_s,
            batch_fault_line=args.batch_fault_line,
            batch_fault_fail=args.batch_fault_fail,
            batch_fault_expire=args.batch_fault_expire,
            batch_fault_stuck=args.batch_fault_stuck,
            batch_fault_poll=args.batch_fault_poll,
            cost_per_m=args.cost_per_m,
            **faults,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return config, args.host, args.port


def _announce(base_url: str) -> None:
    # The one line a parent process waits for.
    print(f"listening on {base_url}", flush=True)


class _ParentGone(asyncio.Protocol):
    """Cancels the server when stdin closes: the parent that launched us died."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    def connection_lost(self, exc: Exception | None) -> None:
        self._task.cancel()


async def _serve_until_signalled(
    config: SimulatorConfig, host: str, port: int, exit_with_parent: bool = False
) -> None:
    task = asyncio.create_task(serve(config, host, port, _announce))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    if exit_with_parent:
        # Even a kill -9 of the parent closes our stdin pipe, so no orphan lingers.
        await loop.connect_read_pipe(lambda: _ParentGone(task), sys.stdin)
    with contextlib.suppress(asyncio.CancelledError):  # the signal: a clean exit
        await task


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM or SIGINT; 0 on a clean exit."""
    raw = list(sys.argv[1:] if argv is None else argv)
    exit_with_parent = "--exit-with-parent" in raw
    config, host, port = config_from_args(raw)
    asyncio.run(_serve_until_signalled(config, host, port, exit_with_parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
