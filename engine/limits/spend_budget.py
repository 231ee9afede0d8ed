"""The job's spending cap (`[job] budget_usd`): reserve the worst case, settle the real cost.

Before a request is sent it reserves its worst-case cost
(`engine.limits.request_cost.worst_case_cost`); when it ends the
reservation is settled with what it was billed (`billed_cost`).  A
reservation is taken only while spent + reserved + it stays within the
cap, so what is spent can never pass it.  When the next request does not
fit, admission waits for the requests in flight to settle (their real cost
is usually well under their worst case, which frees room).  Once nothing is
in flight and it still does not fit, what is left is taken if it pays for
the least the request needs (its answer's expected length: it is then sent
with a smaller `max_tokens`); if not, `reserve` answers None, the dispatcher
tries the batch's chunks one by one, and when a single chunk does not fit
either the budget is `reached`: the job drains and ends with the rest not
started.  So the job stops less than one request's expected cost short of
the cap, and never above it.

The first request goes alone (`probing`): its answer may show that the
provider bills more than the job's prices say (`learn_price`), and every
later worst case is scaled by the most it has billed per dollar of them.

Spent counts this run and the store's earlier runs (`earlier_spend`), so a
rerun with the same cap spends nothing more and one with a higher cap
spends the difference.

This is one process's budget; a cluster's workers share one through Redis
(`engine.cluster.shared_spend`), with the same reservations.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from engine.observe.snapshot import BudgetSnapshot

# Float sums drift by ulps: a reservation that fits to within this is taken.
_EPSILON_USD = 1e-12

Costs = Callable[[], tuple[float, float]]
"""A request's (worst, least) cost now: what it may cost, and the least it can be sent for."""


class BudgetReservation:
    """One request's hold on the budget; settled (or cancelled) exactly once."""

    __slots__ = ("_budget", "_open", "name", "worst_usd")

    def __init__(self, budget: SpendBudget, worst_usd: float, name: str = "") -> None:
        self._budget = budget
        self.worst_usd = worst_usd
        self.name = name  # where the budget is kept elsewhere (Redis): its id there
        self._open = True

    def lower_to(self, worst_usd: float) -> None:
        """The request's worst case is `worst_usd` after all (the key it got is cheaper)."""
        if self._open and worst_usd < self.worst_usd:
            old, self.worst_usd = self.worst_usd, worst_usd
            self._budget._lowered(self, old)

    def settle(self, billed_usd: float) -> None:
        """The request ended, billed `billed_usd`: spent instead of reserved."""
        if not self._open:
            return
        self._open = False
        self._budget._settled(self, billed_usd)

    def cancel(self) -> None:
        """The request was never sent: its reservation goes back."""
        self.settle(0.0)


class SpendBudget:
    """`cap_usd` across this run and the earlier runs that spent `spent_earlier_usd`."""

    EARLIER = "by earlier runs"  # who spent `spent_earlier_usd`, as the end's line says it

    def __init__(self, cap_usd: float, spent_earlier_usd: float = 0.0) -> None:
        self.cap_usd = cap_usd
        self.spent_earlier_usd = spent_earlier_usd
        self.spent_usd = 0.0  # by this run
        self.reserved_usd = 0.0  # by requests in flight
        self.reached = False
        # What a provider that reports its answers' cost bills, per dollar of the job's
        # prices: worst cases are scaled by the most it has been, so they still cover.
        self.price_ratio = 1.0
        self.settles = 0  # requests that ended and were billed (or not)
        self._room = asyncio.Event()  # set whenever a reservation gives some back

    @property
    def spent_total_usd(self) -> float:
        return self.spent_earlier_usd + self.spent_usd

    def fits(self, worst_usd: float) -> bool:
        """Whether a request costing at most `worst_usd` can be reserved now."""
        return self.spent_total_usd + self.reserved_usd + worst_usd <= self.cap_usd + _EPSILON_USD

    def try_reserve(self, worst_usd: float) -> BudgetReservation | None:
        """A reservation of `worst_usd` if it fits now, else None (never waits)."""
        if self.reached or not self.fits(worst_usd):
            return None
        self.reserved_usd += worst_usd
        return BudgetReservation(self, worst_usd)

    async def reserve(self, costs: Costs) -> BudgetReservation | None:
        """A reservation of the request's worst case, waiting while requests in flight may
        free room.

        `costs()` is (worst, least), asked again after every wait: an answer
        meanwhile may have shown what answers cost.  With nothing in flight
        and no room for the worst, what is left, if that is at least the
        least (the request must then be sent within it); else None: the
        request cannot be afforded (`close` says that is final).
        """
        while True:
            if self.probing:
                self._room.clear()
                await self._room.wait()
                continue
            worst_usd, least_usd = costs()
            least = min(least_usd, worst_usd)
            reservation = self.try_reserve(worst_usd)
            if reservation is not None or self.reached:
                return reservation
            if self.reserved_usd <= _EPSILON_USD:
                left = self.cap_usd - self.spent_total_usd
                return self.try_reserve(left) if left >= least and left > 0 else None
            self._room.clear()
            await self._room.wait()

    def close(self) -> None:
        """Nothing more is admitted: the budget is reached."""
        self.reached = True

    @property
    def probing(self) -> bool:
        """The first request is out and none has ended: until it does, the others wait.

        A provider that bills more than the job's prices (its answers say what
        they cost) would otherwise pass the cap with the opening burst, every
        request of it reserved at prices the first answer shows were too low.
        """
        return self.settles == 0 and self.reserved_usd > _EPSILON_USD

    def learn_price(self, reported_usd: float, estimated_usd: float) -> None:
        """An answer cost `reported_usd` where the job's prices said `estimated_usd`."""
        if reported_usd > 0 and estimated_usd > 0:
            self.price_ratio = max(self.price_ratio, reported_usd / estimated_usd)

    def snapshot(self) -> BudgetSnapshot:
        """The budget's figures now, as the snapshot shows them."""
        return BudgetSnapshot(
            cap_usd=self.cap_usd,
            spent_usd=self.spent_total_usd,
            spent_earlier_usd=self.spent_earlier_usd,
            reserved_usd=self.reserved_usd,
            reached=self.reached,
        )

    def _release(self, usd: float) -> None:
        self.reserved_usd -= usd
        if self.reserved_usd < _EPSILON_USD:  # all settled: no float residue held
            self.reserved_usd = 0.0
        self._room.set()

    def _lowered(self, reservation: BudgetReservation, old_usd: float) -> None:
        self._release(old_usd - reservation.worst_usd)

    def _settled(self, reservation: BudgetReservation, billed_usd: float) -> None:
        self.settles += 1
        self.spent_usd += billed_usd
        self._release(reservation.worst_usd)


@dataclass(frozen=True, slots=True)
class RunSpend:
    """What the store knows of one earlier run's spending."""

    summary_json: str | None  # its `runs` row's summary (None: it never recorded an end)
    results_cost_usd: float  # the cost of the results it stored


def earlier_spend(runs: Iterable[RunSpend]) -> float:
    """Dollars the store's earlier runs spent.

    A run's summary says what it was billed (`spent_usd`, written by a
    budgeted run: failed and unanswered requests included) or what its
    answers cost (`cost_usd`); a run that died before writing it (kill -9)
    counts the cost of the results it stored.
    """
    total = 0.0
    for run in runs:
        summary: object = None
        if run.summary_json:
            try:
                summary = json.loads(run.summary_json)
            except ValueError:
                summary = None
        spent = None
        if isinstance(summary, dict):
            for name in ("spent_usd", "cost_usd"):
                value = summary.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    spent = float(value)
                    break
        total += max(run.results_cost_usd, spent) if spent is not None else run.results_cost_usd
    return total


def budget_reached_line(
    budget: SpendBudget,
    not_started: int,
    *,
    counted: bool,
    job_file: str | None,
    from_flag: bool = False,
) -> str:
    """The one line a job stopped by its budget ends with: spent, not started, what to raise.

    `counted`: `not_started` is exact (the input was all counted), else a floor.
    `from_flag`: the cap came from `--set job.budget_usd`, not from `job_file`.
    """
    where = f"in {job_file}" if job_file else "in the job file"
    if from_flag:
        where = "with --set job.budget_usd=…"
    chunks = f"{not_started}" if counted else f"at least {not_started}"
    return (
        f"budget reached: ${budget.spent_total_usd:.4f} of ${budget.cap_usd:.4f} spent "
        f"(${budget.spent_earlier_usd:.4f} {budget.EARLIER}); {chunks} chunks not started "
        f"— raise [job] budget_usd {where} and run again to continue"
    )
