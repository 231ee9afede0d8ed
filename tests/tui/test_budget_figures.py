"""The dashboard's cost figure with a budget: spent of the cap, and what requests out hold."""

from __future__ import annotations

from engine.api import BudgetSnapshot, Snapshot
from tui.widgets.headline_figures import headline_figures


def test_the_cost_figure_notes_spent_of_the_cap_and_what_requests_in_flight_hold() -> None:
    budget = BudgetSnapshot(cap_usd=2.0, spent_usd=0.75, spent_earlier_usd=0.25, reserved_usd=0.1)

    cost = headline_figures(Snapshot(cost_usd=0.5, budget=budget))[3]

    assert cost == ("cost", "$0.5000", "$0.7500 of $2.00 · $0.1000 out")


def test_a_reached_budget_says_so_and_a_job_without_one_keeps_its_projection() -> None:
    reached = BudgetSnapshot(cap_usd=1.0, spent_usd=0.98, reached=True)

    assert headline_figures(Snapshot(budget=reached))[3][2].startswith("REACHED $0.9800 of $1.00")
    assert headline_figures(Snapshot(cost_projected_usd=3.0))[3][2] == "~$3.0000 total"
