"""The spending cap's reservations, what a request is billed, and what earlier runs spent."""

from __future__ import annotations

import asyncio
import json

import pytest

from engine.config.settings import ProviderSettings
from engine.limits.request_cost import (
    PROMPT_MARGIN,
    affordable_output,
    billed_cost,
    dearest,
    worst_case_cost,
)
from engine.limits.spend_budget import Costs, RunSpend, SpendBudget, earlier_spend
from engine.provider.client import CallFailure, CallResult, FailureKind

PROVIDER = ProviderSettings(
    name="p", base_url="http://x/v1", model="m", price_input_per_m=1.0, price_output_per_m=4.0
)


def costs(worst: float, least: float | None = None) -> Costs:
    """A request that may cost `worst` and can be sent for `least` (else only for `worst`)."""
    return lambda: (worst, worst if least is None else least)


def answer(prompt: int, completion: int, cost: float | None = None) -> CallResult:
    return CallResult("{}", prompt, completion, {}, 0.1, cost)


def test_a_worst_case_is_the_prompt_with_its_margin_and_all_of_max_tokens() -> None:
    assert worst_case_cost(PROVIDER, 1000, 500) == pytest.approx(
        (1000 * PROMPT_MARGIN * 1.0 + 500 * 4.0) / 1e6
    )


def test_the_output_a_sum_affords_beside_a_prompt_is_capped_at_max_output_tokens() -> None:
    capped = ProviderSettings(
        name="p",
        base_url="http://x/v1",
        model="m",
        price_input_per_m=1.0,
        price_output_per_m=4.0,
        max_output_tokens=500,
    )
    prompt_worst = 1000 * PROMPT_MARGIN * 1.0 / 1e6

    assert affordable_output(capped, 1000, prompt_worst + 100 * 4.0 / 1e6) == 99  # a hair under
    assert affordable_output(capped, 1000, 1.0) == 500
    assert affordable_output(capped, 1000, prompt_worst / 2) == 0
    # What it affords, it costs no more than.
    tokens = affordable_output(capped, 1000, 0.0015)
    assert worst_case_cost(capped, 1000, tokens) <= 0.0015


def test_the_dearest_of_several_providers_is_dear_on_every_count() -> None:
    cheap_in = ProviderSettings(
        name="a", base_url="http://a/v1", model="m", price_input_per_m=0.1, price_output_per_m=9.0
    )
    cheap_out = ProviderSettings(
        name="b",
        base_url="http://b/v1",
        model="n",
        price_input_per_m=2.0,
        price_output_per_m=1.0,
        max_output_tokens=4096,
    )

    dear = dearest([cheap_in, cheap_out])

    assert dear is not None
    assert (dear.price_input_per_m, dear.price_output_per_m, dear.max_output_tokens) == (
        2.0,
        9.0,
        4096,
    )
    assert dearest([]) is None


def test_an_answer_is_billed_what_the_provider_says_else_its_tokens_at_the_prices() -> None:
    assert billed_cost(PROVIDER, answer(1000, 500), 1.0) == pytest.approx(0.003)
    assert billed_cost(PROVIDER, answer(1000, 500, cost=0.0123), 1.0) == 0.0123


@pytest.mark.parametrize(
    ("kind", "billed"),
    [
        (FailureKind.RATE_LIMITED, 0.0),
        (FailureKind.QUOTA, 0.0),
        (FailureKind.AUTH, 0.0),
        (FailureKind.BAD_REQUEST, 0.0),
        (FailureKind.SERVER, 0.0),
        (FailureKind.TIMEOUT, 0.5),  # it may have run: the worst case
        (FailureKind.CONNECTION, 0.5),
        (FailureKind.MALFORMED, 0.5),
    ],
)
def test_a_failure_is_billed_nothing_when_refused_and_its_worst_case_when_its_fate_is_unknown(
    kind: FailureKind, billed: float
) -> None:
    assert billed_cost(PROVIDER, CallFailure(kind, "", {}, 0.1), 0.5) == billed
    assert billed_cost(PROVIDER, None, 0.5) == 0.5  # cancelled on the wire


async def test_a_reservation_that_does_not_fit_waits_for_one_in_flight_to_settle() -> None:
    budget = SpendBudget(1.0)
    first = await budget.reserve(costs(0.6))
    assert first is not None and budget.reserved_usd == 0.6

    waiting = asyncio.create_task(budget.reserve(costs(0.6)))
    await asyncio.sleep(0)
    assert not waiting.done()  # 0.6 + 0.6 would pass 1.0, and 0.6 may come back
    first.settle(0.3)  # it cost less than its worst case
    second = await asyncio.wait_for(waiting, 1.0)

    assert second is not None
    assert (budget.spent_usd, budget.reserved_usd) == (pytest.approx(0.3), pytest.approx(0.6))
    assert not budget.reached


async def test_until_the_first_request_ends_the_next_waits_for_it() -> None:
    budget = SpendBudget(10.0)
    first = await budget.reserve(costs(1.0))
    assert first is not None and budget.probing

    waiting = asyncio.create_task(budget.reserve(costs(1.0)))
    await asyncio.sleep(0)
    assert not waiting.done()  # room enough, but the first answer may say prices are low
    first.settle(2.0)  # it did: billed twice its worst case
    budget.learn_price(2.0, 1.0)

    assert await asyncio.wait_for(waiting, 1.0) is not None
    assert budget.price_ratio == 2.0 and not budget.probing


async def test_with_nothing_in_flight_what_is_left_is_taken_if_it_pays_for_the_least() -> None:
    budget = SpendBudget(1.0, spent_earlier_usd=0.7)

    assert await budget.reserve(costs(0.4)) is None  # no least: all of it or nothing
    assert await budget.reserve(costs(0.4, 0.35)) is None
    last = await budget.reserve(costs(0.4, 0.2))

    assert last is not None and last.worst_usd == pytest.approx(0.3)
    assert budget.spent_total_usd + budget.reserved_usd == pytest.approx(1.0)
    assert not budget.reached


async def test_a_closed_budget_admits_nothing_more() -> None:
    budget = SpendBudget(1.0)
    budget.close()

    assert budget.reached
    assert budget.try_reserve(0.01) is None
    assert await budget.reserve(costs(0.01)) is None


async def test_a_reservation_settles_once_and_a_cancelled_one_costs_nothing() -> None:
    budget = SpendBudget(1.0)
    sent = await budget.reserve(costs(0.5))
    unsent = budget.try_reserve(0.2)  # the first is out: `reserve` would wait for it
    assert sent is not None and unsent is not None

    sent.settle(0.4)
    sent.settle(0.4)
    sent.cancel()
    unsent.lower_to(0.1)
    assert budget.reserved_usd == pytest.approx(0.1)
    unsent.cancel()

    assert (budget.spent_usd, budget.reserved_usd) == (pytest.approx(0.4), 0.0)
    assert budget.snapshot().spent_usd == pytest.approx(0.4)


def test_earlier_runs_count_what_they_were_billed_else_what_their_answers_or_results_cost() -> None:
    runs = [
        RunSpend(json.dumps({"cost_usd": 1.0, "spent_usd": 1.5}), 1.0),  # a budgeted run
        RunSpend(json.dumps({"cost_usd": 2.0}), 2.0),  # a run without a budget
        RunSpend(json.dumps({"done": 3, "fatal": "killed?"}), 0.25),  # interrupted
        RunSpend(None, 0.125),  # still running when this one started, or killed mid-start
        RunSpend("not json", 0.0),
    ]

    assert earlier_spend(runs) == pytest.approx(1.5 + 2.0 + 0.25 + 0.125)
