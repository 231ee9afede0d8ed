"""What the snapshot says of a batch-mode job's Batch API batches."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SubmittedBatch:
    """One batch given to a provider's Batch API and not yet settled."""

    batch_id: str  # the provider's id ("" until it has created the batch)
    key_alias: str
    state: str  # the provider's: validating, in_progress, finalizing, completed, …
    requests: int
    completed: int  # requests the provider has answered so far
    failed: int
    chunks: int
    age_s: float
    window_s: float  # the completion window it was given
    resumed: bool = False  # submitted by an earlier run and picked up by this one


@dataclass(frozen=True, slots=True)
class BatchRoute:
    """The batch route's state: its open batches and what the job will cost at batch prices."""

    batches: tuple[SubmittedBatch, ...] = ()
    submitted: int = 0  # batches this run submitted
    resumed: int = 0  # batches this run picked up from an earlier one
    settled: int = 0  # batches whose answers are stored
    abandoned: int = 0  # batches given up (failed, expired, past the deadline): sent again
    collecting: int = 0  # requests waiting for the next input file
    chunks_sent_online: int = 0  # cut off from batches whose window was at risk
    cost_usd: float = 0.0  # of the answers stored, at batch prices
    # The whole job: its batch route's share at batch prices, what went online as paid.
    cost_projected_usd: float | None = None
    online_cost_projected_usd: float | None = None  # the route's share at online prices


def batch_route_text(route: BatchRoute) -> str:
    """The batch route in a few words, for the status line: open batches by state,
    what settled, and the job's cost projected at batch prices (and online)."""
    states: dict[str, int] = {}
    for batch in route.batches:
        states[batch.state] = states.get(batch.state, 0) + 1
    open_text = " ".join(f"{state} {n}" for state, n in sorted(states.items())) or "none open"
    oldest = max((batch.age_s for batch in route.batches), default=0.0)
    age = f", oldest {oldest:.0f}s" if route.batches else ""
    cost = ""
    if route.cost_projected_usd is not None:
        cost = f", projected ${route.cost_projected_usd:.4f}"
        if route.online_cost_projected_usd is not None:
            cost += f" (online ${route.online_cost_projected_usd:.4f})"
    online = f", {route.chunks_sent_online} chunks sent online" if route.chunks_sent_online else ""
    return (
        f"batches {open_text}{age}; settled {route.settled}, given up {route.abandoned}"
        f"{online}{cost}"
    )
