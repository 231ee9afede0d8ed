"""What a request costs in US dollars: its tokens at its model's prices, or what the provider says.

Prices are per million tokens and come from the job file (a provider's
`price_*_per_m`, or `[prices."MODEL"]` for its model).  A provider that
reports an answer's cost (OpenRouter's `usage.cost`) is believed over the
estimate: it is what the bill will say.

A request's worst case is what admission reserves against the job's budget
(`engine.limits.spend_budget`): its prompt as estimated, with a margin for
the estimate's misses, plus the whole `max_tokens` it is sent with.  What a
request that got no answer is billed is unknown; the budget takes the worst
case for it, so the cap holds whatever the bill says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

from engine.config.settings import ProviderSettings
from engine.provider.client import CallFailure, CallResult, FailureKind

PROMPT_MARGIN = 1.25
"""The prompt estimate (utf-8 bytes / 3) undercounts a few documents in a
hundred; a quarter more covers them, so a provider's count never passes the
reservation."""

# Refused or failed before any work: providers do not bill these.
_NOT_BILLED = frozenset(
    {
        FailureKind.RATE_LIMITED,
        FailureKind.QUOTA,
        FailureKind.AUTH,
        FailureKind.BAD_REQUEST,
        FailureKind.SERVER,
    }
)


def token_cost(provider: ProviderSettings, prompt_tokens: float, completion_tokens: float) -> float:
    """Dollars for `prompt_tokens` in and `completion_tokens` out at `provider`'s prices."""
    return (
        prompt_tokens * provider.price_input_per_m + completion_tokens * provider.price_output_per_m
    ) / 1e6


def answer_cost(provider: ProviderSettings, result: CallResult) -> float:
    """What an answer costs: the provider's own figure when it gives one, else its usage priced."""
    if result.cost_usd is not None:
        return result.cost_usd
    return token_cost(provider, result.prompt_tokens, result.completion_tokens)


def worst_case_cost(provider: ProviderSettings, prompt_tokens: int, max_tokens: int) -> float:
    """The most a request of `prompt_tokens` (as estimated) sent with `max_tokens` can cost."""
    return token_cost(provider, prompt_tokens * PROMPT_MARGIN, max_tokens)


def dearest(providers: Iterable[ProviderSettings]) -> ProviderSettings | None:
    """A provider as dear as the dearest of `providers` on every count: the highest
    input price, output price and `max_output_tokens` of them (None if there are none).

    What a request costs on it bounds what it costs on any of them, so admission
    can reserve before it knows which key the request gets.
    """
    listed = list(providers)
    if not listed:
        return None
    return replace(
        listed[0],
        price_input_per_m=max(p.price_input_per_m for p in listed),
        price_output_per_m=max(p.price_output_per_m for p in listed),
        max_output_tokens=max(p.max_output_tokens for p in listed),
    )


def affordable_output(provider: ProviderSettings, prompt_tokens: int, usd: float) -> int:
    """The most output tokens `usd` pays for on `provider` beside the worst case of the prompt,
    capped at its `max_output_tokens` (0: not even the prompt fits)."""
    left = usd - token_cost(provider, prompt_tokens * PROMPT_MARGIN, 0)
    if left < 0:
        return 0
    if provider.price_output_per_m <= 0:
        return provider.max_output_tokens
    # A hair under: the reservation must cover what is sent, rounding and all.
    tokens = math.floor(left * 1e6 / provider.price_output_per_m * (1 - 1e-9))
    return max(0, min(provider.max_output_tokens, tokens))


def billed_cost(
    provider: ProviderSettings, outcome: CallResult | CallFailure | None, worst_usd: float
) -> float:
    """What a sent request counts against the budget.

    An answer costs what `answer_cost` says; a refusal (429, quota, auth, a
    bad request) or a server error costs nothing; a request whose fate is
    unknown (no answer: a timeout, a dropped connection, an unreadable body,
    cancelled on the wire — `outcome` None) counts its worst case.
    """
    if isinstance(outcome, CallResult):
        return answer_cost(provider, outcome)
    if outcome is not None and outcome.kind in _NOT_BILLED:
        return 0.0
    return worst_usd
