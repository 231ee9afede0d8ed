"""Every API key's request and token budget in Redis, shared by all of a job's workers.

The in-process `KeyBudget` (`engine.limits.rate_limiter`) is a dual token
bucket that each process would keep for itself: N workers would send N
times a key's limit.  Here the buckets live in one Redis hash per key under
the job's prefix, and every operation on them — open, reserve, settle
(reconcile, release, header sync, a 429) — is one call of one Lua script
(`budget_scripts.lua`), so it is atomic and computed on Redis's own clock
(`TIME`): workers on machines whose clocks disagree still agree on what is
left.  The script's arithmetic is `KeyBudget`'s, step for step, and its
constants are the Python ones, written above its text when it is loaded.

The Lua is a file of its own, not a Python string: it is read, reviewed and
diffed as the program it is.  It is one script with an operation argument
rather than four, so the bucket arithmetic is written once and a restarted
Redis (which forgets loaded scripts) reloads one thing, transparently
(redis-py's `Script` sends it again on `NOSCRIPT`).

Redis restarting or unreachable: each call is retried with exponential
backoff for `retry_for_s` (the cluster's `DeadlineRetry`, here rather than
on the client, so it holds whoever built the client), then
`SharedBudgetUnavailable` is raised: the job ends rather than sending
without a budget.  A reservation whose answer was lost
with the connection may be taken twice (the worker sends one): the cluster
then under-spends a request, never over-spends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.cluster.redis_connection import DeadlineRetry
from engine.limits.provider_headroom import (
    SEND_SPREAD_S,
    SPREAD_WIDENS_UP_TO,
    BucketReading,
    HeaderTrust,
)
from engine.limits.rate_limiter import (
    BURST_SECONDS,
    FIRST_FILL_S,
    LEVEL_SLACK,
    MIN_CAPACITY,
    KeyBudget,
    RateHeaders,
)

# A reservation's time is Redis's, taken before the script's reply reaches the worker
# and its loop puts the request on the wire — a gap one process measures for each
# request (`KeyBudget.wired`) and a cluster does not: its send spread covers it too.
# (0.1 s in all: with four workers and the simulator on two cores, 0.03 s in all
# drew 429s where this drew none.)
CLUSTER_SEND_SPREAD_S = SEND_SPREAD_S + 0.07

# One slot a second over `KeyState.answered_rpm`'s window: the rate a key
# was sending at, cluster-wide, when a 429 without limit headers lowers it.
ANSWER_SLOTS = 10
# How long a call waits for Redis to come back before the job gives up.
RETRY_FOR_S = 60.0
# Jittered, so workers that lost Redis together do not come back in step.
_DAY_S = 86_400.0


def _script_source() -> str:
    """The Lua text, with the Python side's constants written above it."""
    constants = {
        "MIN_CAPACITY": MIN_CAPACITY,
        "LEVEL_SLACK": LEVEL_SLACK,
        "BURST_SECONDS": BURST_SECONDS,
        "FIRST_FILL_S": FIRST_FILL_S,
        "SEND_SPREAD_S": CLUSTER_SEND_SPREAD_S,
        "SPREAD_WIDENS_UP_TO": SPREAD_WIDENS_UP_TO,
        "BACKOFF_FACTOR": KeyBudget.BACKOFF_FACTOR,
        "LESSON_S": KeyBudget.LESSON_S,
        "RECOVERY_PER_MINUTE": KeyBudget.RECOVERY_PER_MINUTE,
        "RECOVERY_EVERY_S": KeyBudget.RECOVERY_EVERY_S,
        "TRUST_FLOOR": HeaderTrust.FLOOR,
        "TRUST_STORM_S": HeaderTrust.STORM_S,
        "TRUST_QUIET_S": HeaderTrust.QUIET_S,
        "TRUST_STEP": HeaderTrust.STEP,
        "TRUST_STEP_EVERY_S": HeaderTrust.STEP_EVERY_S,
        "ANSWER_SLOTS": ANSWER_SLOTS,
    }
    prelude = "".join(f"local {name} = {value!r}\n" for name, value in constants.items())
    body = resources.files("engine.cluster").joinpath("budget_scripts.lua").read_text("utf-8")
    return prelude + body


class SharedBudgetUnavailable(RuntimeError):
    """Redis did not answer for the whole retry window: no budget, no sending."""


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's configured limits (None: none on that axis), as the job file says."""

    key_id: str
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A key a request may go to: its limits (to remake a lost budget), the
    request's estimate and admission charge there, and how long this worker
    itself still holds it cooling."""

    key_id: str
    rpm: int | None
    tpm: int | None
    est_tokens: int
    charge: int
    cooling_s: float = 0.0
    spare: int = 0  # requests like it that must stay free after it (`KeyBudgets.lease`)


def _number(raw: str) -> float | None:
    return None if raw == "" else float(raw)


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass(frozen=True, slots=True)
class SharedKeyState:
    """One key's shared budget as a script left it, at `now` on Redis's clock.

    Levels are after the refill up to `now`; None means no limit on that axis.
    """

    now: float
    limit_rpm: float | None
    limit_tpm: float | None
    requests_burst_s: float
    requests_level: float | None
    tokens_burst_s: float
    tokens_level: float | None
    header_limits_seen: bool
    headroom_from_headers: bool
    trust: float
    cooldown_until: float
    reserved_requests: int
    reserved_tokens: int
    token_reading: BucketReading | None  # the provider's last word on the tokens

    @classmethod
    def parse(cls, raw: Sequence[object]) -> SharedKeyState:
        """From the script's list of numbers as strings (its `state()`)."""
        f = [_text(x) for x in raw]
        remaining, reset, limit, taken_at = (_number(x) for x in f[13:17])
        reading = (
            BucketReading(remaining, reset, limit or 0.0, taken_at or 0.0)
            if remaining is not None
            else None
        )
        return cls(
            now=float(f[0]),
            limit_rpm=_number(f[1]),
            limit_tpm=_number(f[2]),
            requests_burst_s=float(f[3]),
            requests_level=_number(f[4]),
            tokens_burst_s=float(f[5]),
            tokens_level=_number(f[6]),
            header_limits_seen=f[7] == "1",
            headroom_from_headers=f[8] == "1",
            trust=float(f[9]),
            cooldown_until=float(f[10]),
            reserved_requests=int(float(f[11])),
            reserved_tokens=int(float(f[12])),
            token_reading=reading,
        )

    def cooling_for(self) -> float:
        """Seconds the key still cools after a 429, as of `now`."""
        return max(0.0, self.cooldown_until - self.now)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A reservation: `taken` tokens and one request on `key_id`.

    `sent_at` (Redis's clock) and `marks` (requests, tokens reserved
    cluster-wide before the key's last send spread) are what the answer's
    header sync needs to tell what its headers cannot count yet.
    """

    key_id: str
    taken: int
    sent_at: float
    marks: tuple[int, int]
    state: SharedKeyState
    charge: int = 0  # what it added to the key's count of tokens reserved


@dataclass(frozen=True, slots=True)
class Waiting:
    """Nothing taken: the soonest a candidate can admit is in `wait_s` seconds."""

    wait_s: float
    states: Mapping[str, SharedKeyState]


@dataclass(frozen=True, slots=True)
class Reconcile:
    """An answer: `reserved` tokens were held, the provider counted `used`."""

    key_id: str
    reserved: int
    used: int


@dataclass(frozen=True, slots=True)
class Release:
    """A request that never reached the provider: its tokens go back."""

    key_id: str
    tokens: int


@dataclass(frozen=True, slots=True)
class HeaderSync:
    """An answer's `x-ratelimit-*` headers; with `sent_at` and `marks` (of its
    reservation) they set the headroom, without them they only tighten."""

    key_id: str
    headers: RateHeaders
    sent_at: float | None = None
    marks: tuple[int, int] = (0, 0)
    # The answered request's own charge: its headers count it, so what was
    # reserved since its marks is that much less (None: not known).
    own_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RateLimited:
    """A 429 of `kind` ("requests" or "tokens"): the key cools `wait_s` for everyone."""

    key_id: str
    kind: str
    wait_s: float


SettleOp = Reconcile | Release | HeaderSync | RateLimited


@dataclass(frozen=True, slots=True)
class Learned:
    """What one settled op taught: a limit (which, old, new), a fall in header trust."""

    limit: tuple[str, float, float] | None = None
    distrust: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """Settled ops: what each taught, in order, and the state of each key they touched."""

    learned: Sequence[Learned]
    states: Mapping[str, SharedKeyState]


def _headers_payload(headers: RateHeaders) -> dict[str, float]:
    fields = {
        "limit_requests": headers.limit_requests,
        "limit_tokens": headers.limit_tokens,
        "remaining_requests": headers.remaining_requests,
        "remaining_tokens": headers.remaining_tokens,
        "reset_requests_s": headers.reset_requests_s,
        "reset_tokens_s": headers.reset_tokens_s,
    }
    return {name: value for name, value in fields.items() if value is not None}


def _limits(rpm: int | None, tpm: int | None) -> dict[str, int]:
    # Absent, not null: the script's JSON null is not Lua's nil.
    return {name: value for name, value in (("rpm", rpm), ("tpm", tpm)) if value is not None}


def _learned(raw: Sequence[object]) -> Learned:
    f = [_text(x) for x in raw]
    if len(f) == 3:  # a header sync that lowered a limit
        return Learned(limit=(f[0], float(f[1]), float(f[2])))
    if len(f) >= 2:  # a 429: maybe a fall in trust, maybe a lowered limit
        fell = (float(f[0]), float(f[1])) if f[0] else None
        limit = (f[2], float(f[3]), float(f[4])) if len(f) == 5 else None
        return Learned(limit=limit, distrust=fell)
    return Learned()


class SharedBudget:
    """The job's key budgets in Redis under `prefix` (one hash per key).

    `on_trouble` hears, in one line, when Redis stops answering and when it
    answers again.
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        retry_for_s: float = RETRY_FOR_S,
        on_trouble: Callable[[str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_script_source())
        self._retry_for_s = retry_for_s
        self._on_trouble = on_trouble
        self.retries = 0  # calls sent again after a connection failure, all told

    def hash_key(self, key_id: str) -> str:
        """The Redis hash of `key_id`'s budget."""
        return f"{self._prefix}:budget:{key_id}"

    def _recent_key(self, key_id: str) -> str:
        return f"{self._prefix}:budget:{key_id}:recent"

    async def open(self, keys: Sequence[KeyLimits]) -> dict[str, SharedKeyState]:
        """Make each key's budget unless a worker already has (remade, counters
        kept, if its configured limits changed); their states."""
        payload = {"keys": [_limits(k.rpm, k.tpm) for k in keys]}
        raw = await self._call("open", [self.hash_key(k.key_id) for k in keys], payload)
        return {k.key_id: SharedKeyState.parse(s) for k, s in zip(keys, raw, strict=True)}

    async def reserve(self, candidates: Sequence[Candidate]) -> Admitted | Waiting:
        """One request and its tokens on the candidate that can admit soonest
        (ties: the most free budget), or nothing and how long to wait.

        A key cooling after a 429 (anyone's) waits its cool-down out.
        """
        (answer,) = await self.reserve_many([candidates])
        return answer

    async def reserve_many(self, asks: Sequence[Sequence[Candidate]]) -> list[Admitted | Waiting]:
        """`reserve` for each of `asks`, in order, in one atomic call; every ask names
        the same keys in the same order."""
        if not asks or not asks[0]:
            raise ValueError("reserve needs at least one ask of at least one candidate key")
        first = [c.key_id for c in asks[0]]
        if any([c.key_id for c in ask] != first for ask in asks[1:]):
            raise ValueError("the asks of one reservation call must name the same keys")
        keys: list[str] = []
        for key_id in first:
            keys += [self.hash_key(key_id), self._recent_key(key_id)]
        payload = {
            "asks": [
                [
                    {
                        **_limits(c.rpm, c.tpm),
                        "est": c.est_tokens,
                        "charge": c.charge,
                        "cooling": c.cooling_s,
                        "spare": c.spare,
                    }
                    for c in ask
                ]
                for ask in asks
            ]
        }
        raw = await self._call("reserve", keys, payload)
        return [_reservation(ask, answer) for ask, answer in zip(asks, raw, strict=True)]

    async def settle(self, ops: Sequence[SettleOp]) -> Settled:
        """Apply `ops` in order, all in one atomic call."""
        key_ids: list[str] = []
        index: dict[str, int] = {}
        encoded: list[dict[str, Any]] = []
        for op in ops:
            if op.key_id not in index:
                key_ids.append(op.key_id)
                index[op.key_id] = len(key_ids)
            encoded.append({"k": index[op.key_id], **_encode(op)})
        if not encoded:
            return Settled((), {})
        raw = await self._call("settle", [self.hash_key(k) for k in key_ids], {"ops": encoded})
        learned = [_learned(x) for x in raw[0]]
        states = {
            key_id: SharedKeyState.parse(s)
            for key_id, s in zip(key_ids, raw[1], strict=True)
            if len(s) > 0
        }
        return Settled(learned, states)

    async def read(self, key_ids: Sequence[str]) -> dict[str, SharedKeyState]:
        """The keys' budgets now (those that exist)."""
        raw = await self._call("read", [self.hash_key(k) for k in key_ids], {})
        return {k: SharedKeyState.parse(s) for k, s in zip(key_ids, raw, strict=True) if len(s) > 0}

    async def _call(self, op: str, keys: Sequence[str], payload: Mapping[str, Any]) -> Any:
        args = [op, json.dumps(payload)]
        failures = 0

        async def attempt() -> Any:
            return await self._script(keys=keys, args=args, client=self._redis)

        async def failed(error: Exception) -> None:
            nonlocal failures
            failures += 1
            self.retries += 1
            if failures == 1:
                self._say(f"shared key budgets: Redis did not answer ({error}); retrying")

        try:
            result = await DeadlineRetry(self._retry_for_s).call_with_retry(attempt, failed)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise SharedBudgetUnavailable(
                f"shared key budgets: Redis did not answer for {self._retry_for_s:g}s ({exc})"
            ) from exc
        if failures:
            self._say(f"shared key budgets: Redis answers again (after {failures} retries)")
        return result

    def _say(self, message: str) -> None:
        if self._on_trouble is not None:
            self._on_trouble(message)


def _reservation(candidates: Sequence[Candidate], raw: Sequence[Any]) -> Admitted | Waiting:
    """One ask's answer from the reserve script."""
    if _text(raw[0]) == "admitted":
        chosen = candidates[int(_text(raw[1])) - 1]
        return Admitted(
            key_id=chosen.key_id,
            taken=int(float(_text(raw[2]))),
            sent_at=float(_text(raw[3])),
            marks=(int(_text(raw[4])), int(_text(raw[5]))),
            state=SharedKeyState.parse(raw[6]),
            charge=chosen.charge,
        )
    states = {c.key_id: SharedKeyState.parse(s) for c, s in zip(candidates, raw[2], strict=True)}
    return Waiting(float(_text(raw[1])), states)


def _encode(op: SettleOp) -> dict[str, Any]:
    if isinstance(op, Reconcile):
        return {"op": "reconcile", "reserved": op.reserved, "used": op.used}
    if isinstance(op, Release):
        return {"op": "release", "tokens": op.tokens}
    if isinstance(op, HeaderSync):
        encoded: dict[str, Any] = {"op": "sync", "headers": _headers_payload(op.headers)}
        if op.sent_at is not None:
            encoded |= {"sent_at": op.sent_at, "marks": list(op.marks)}
            if op.own_tokens is not None:
                encoded["own"] = op.own_tokens
        return encoded
    # JSON has no infinity: a cool-down without end is a day's.
    return {"op": "refused", "kind": op.kind, "wait": max(0.0, min(op.wait_s, _DAY_S))}
