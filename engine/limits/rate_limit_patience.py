"""How long 429s are waited out: per key, then per batch.

A 429 says "wait", and waiting is right while the provider is merely
busy.  A provider that answers 429 forever would keep a job waiting
forever, so the waits are bounded (`RateLimitWaits`): a key that keeps
being refused with no answer in between cools for longer and longer, then
is disabled with its reason; a batch refused too often, or told to wait
too long in total, fails with its reason.  Any answer resets a key.

A key's refusals are counted in *rounds*: a 429 on a request sent after
the key's last counted 429.  Requests already in flight when the first
429 came cannot have known better, so a burst of them counts once — a
busy key with sixty-four requests in flight must not look like a dead one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.config.settings import RateLimitWaits


def format_wait(seconds: float) -> str:
    """A wait for a message: `20ms`, `4.5s`, `2m30s`, `6h0m`."""
    if seconds < 1.0:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60.0:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(frozen=True, slots=True)
class KeyCooling:
    """What one 429 does to its key: cool for `wait_s`, or be disabled for `disabled_reason`.

    `counted` is False for a 429 on a request sent before the key's last
    counted one (part of the same burst); `longer` is the escalated
    cool-down's number (1, 2, …), 0 for an ordinary one.
    """

    wait_s: float
    counted: bool = True
    rounds: int = 0
    longer: int = 0
    disabled_reason: str = ""


@dataclass(slots=True)
class KeyRefusals:
    """One key's 429s since its last answer."""

    rounds: int = 0
    waited_s: float = 0.0  # cool-downs imposed by counted rounds
    longer: int = 0  # escalated cool-downs so far
    last_round_at: float = -math.inf
    first_round_at: float = 0.0

    def answered(self) -> None:
        """The key answered: whatever it was refused before is forgiven."""
        self.rounds = 0
        self.waited_s = 0.0
        self.longer = 0
        self.last_round_at = -math.inf

    def refused(
        self, waits: RateLimitWaits, *, now: float, sent_at: float, retry_after_s: float
    ) -> KeyCooling:
        """A 429 on a request sent at `sent_at`, asking for `retry_after_s`: the verdict."""
        if sent_at < self.last_round_at:
            return KeyCooling(retry_after_s, counted=False, rounds=self.rounds)
        if self.rounds == 0:
            self.first_round_at = now
        self.rounds += 1
        self.last_round_at = now
        if retry_after_s > waits.key_wait_s:
            return KeyCooling(
                retry_after_s,
                rounds=self.rounds,
                disabled_reason=(
                    f"rate limited: the provider asked for a {format_wait(retry_after_s)} wait, "
                    f"longer than rate_limit_waits.key_wait_s ({format_wait(waits.key_wait_s)})"
                ),
            )
        past_bound = (
            self.longer > 0
            or self.rounds >= waits.key_streak
            or self.waited_s + retry_after_s > waits.key_wait_s
        )
        if not past_bound:
            self.waited_s += retry_after_s
            return KeyCooling(retry_after_s, rounds=self.rounds)
        if self.longer >= waits.key_escalations:
            return KeyCooling(
                retry_after_s,
                rounds=self.rounds,
                disabled_reason=(
                    f"rate limited: 429 on {self.rounds} tries in a row over "
                    f"{format_wait(now - self.first_round_at)} with no answer, "
                    f"after {self.longer} longer cool-down(s) (rate_limit_waits)"
                ),
            )
        self.longer += 1
        wait = max(retry_after_s, waits.key_escalation_s * 2 ** (self.longer - 1))
        self.waited_s += wait
        return KeyCooling(wait, rounds=self.rounds, longer=self.longer)


def batch_gives_up(waits: RateLimitWaits, refusals: int, waited_s: float) -> str:
    """Why a batch refused `refusals` times, told to wait `waited_s` in all, stops; "" if not."""
    if refusals >= waits.batch_429s:
        return f"refused with 429 {refusals} times (rate_limit_waits.batch_429s)"
    if waited_s > waits.batch_wait_s:
        return (
            f"429s asked it to wait {format_wait(waited_s)} in all, more than "
            f"rate_limit_waits.batch_wait_s ({format_wait(waits.batch_wait_s)})"
        )
    return ""
