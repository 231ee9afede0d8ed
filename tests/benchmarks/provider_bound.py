"""What a run is measured against: the provider's bound, the ETA's error, the store's tally.

Pure arithmetic and one read of a SQLite store, kept apart from the
benchmark that runs jobs (`rate_limit_efficiency`) so a test can pin them.

**The bound.**  Key k's buckets hold `burst_s` seconds of its limits and
refill at the limits; a request is charged one request and `c` tokens (what
the provider charges at admission: the prompt estimate + `max_tokens`).  So
key k serves `R_k = min(rpm_k, tpm_k / c)` requests a minute, and starts
with `R_k × burst_s / 60` of them in its bucket.  N requests can't finish
before

    bound_s = 60 × (N / Σ_k R_k − burst_s / 60)

(the burst is spent at once, the rest at the refill rate; latency is not
counted).  A job small enough to fit inside the burst still takes one
answer's time, so the bound is never below `floor_s`.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

Limits = tuple[int | None, int | None]
"""A key's (requests per minute, tokens per minute); None: no limit on that axis."""


def requests_per_minute(keys: Sequence[Limits], tokens_per_request: float) -> float:
    """Σ_k min(rpm_k, tpm_k / c): the requests a minute all keys together sustain."""
    total = 0.0
    for rpm, tpm in keys:
        by_requests = math.inf if rpm is None else float(rpm)
        by_tokens = math.inf if tpm is None or tokens_per_request <= 0 else tpm / tokens_per_request
        total += min(by_requests, by_tokens)
    return total


def provider_bound_s(
    requests: int,
    keys: Sequence[Limits],
    tokens_per_request: float,
    burst_s: float,
    floor_s: float,
) -> float:
    """The least wall time the keys' buckets allow for `requests` requests (see the module)."""
    rate = requests_per_minute(keys, tokens_per_request)
    if math.isinf(rate):
        return floor_s
    return max(floor_s, 60.0 * (requests / rate - burst_s / 60.0))


@dataclass
class EtaWatch:
    """The job's ETA as it stood when the finished share first reached each mark.

    Fed with what a front end would see (elapsed seconds, chunks finished,
    the snapshot's ETA) on every tick of a sampler; `errors()` compares each
    noted ETA with the time the job then really took.
    """

    total: int
    marks: tuple[float, ...] = (0.10, 0.25)
    noted: dict[float, tuple[float, float | None]] = field(default_factory=dict)

    def observe(self, elapsed_s: float, finished: int, eta_s: float | None) -> None:
        """One sample: `finished` chunks ended (done or failed) at `elapsed_s`."""
        for mark in self.marks:
            if mark not in self.noted and finished >= mark * self.total:
                self.noted[mark] = (elapsed_s, eta_s)

    def errors(self, wall_s: float) -> dict[float, float | None]:
        """Per mark, (ETA − time that really remained) ÷ time that really remained.

        Positive: the ETA promised too long; negative: too short.  None when
        the mark was never reached or the snapshot had no ETA then.
        """
        errors: dict[float, float | None] = {}
        for mark in self.marks:
            elapsed_s, eta_s = self.noted.get(mark, (wall_s, None))
            remained = wall_s - elapsed_s
            errors[mark] = None if eta_s is None or remained <= 0 else (eta_s - remained) / remained
        return errors


@dataclass(frozen=True, slots=True)
class StoreTally:
    """What a job's store holds for its chunks, from the store itself.

    `done`: chunks with a result; `failed`: chunks with a failure and no
    result; `unexplained`: failures stored without a reason; `lost`: chunks
    with neither; `twice`: extra result rows for one chunk, plus chunks
    stored both as a result and as a failure.
    """

    done: int
    failed: int
    unexplained: int
    lost: int
    twice: int

    @property
    def whole(self) -> bool:
        """Every chunk done or failed with a reason, none lost, none twice."""
        return self.lost == 0 and self.twice == 0 and self.unexplained == 0

    def __str__(self) -> str:
        return f"{self.done}/{self.failed}/{self.lost}/{self.twice}"


def tally_store(db: Path, chunks: int) -> StoreTally:
    """Count `db`'s results and failures against the job's `chunks` chunks."""
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        per_result = dict(conn.execute("SELECT chunk_id, COUNT(*) FROM results GROUP BY chunk_id"))
        failures = conn.execute("SELECT chunk_id, reason FROM failures").fetchall()
    failed_ids = {chunk_id for chunk_id, _ in failures}
    both = failed_ids & per_result.keys()
    return StoreTally(
        done=len(per_result),
        failed=len(failed_ids - per_result.keys()),
        unexplained=sum(1 for _, reason in failures if not reason.strip()),
        lost=chunks - len(failed_ids | per_result.keys()),
        twice=sum(count - 1 for count in per_result.values()) + len(both),
    )
