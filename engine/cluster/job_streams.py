"""The Redis keys of one job's work and results, under the job's key prefix.

Every process of a job derives the same names from the same prefix, so a
process started later (or again) finds the stream, the consumer groups and
the counters the others use.  The keys of one job share no name with
another job's: the prefix is the job's identity in Redis, and a finished
job's keys say it is over (everything enqueued, everything settled) until
they are deleted (`keys`).

The scripts touch several of these keys at once; on a Redis Cluster give a
prefix in braces (`{job}`) so they all hash to one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class JobStreams:
    """The names of the job's streams, sets and counters."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix:
            raise ValueError("a job's key prefix cannot be empty")

    @property
    def work(self) -> str:
        """The stream of batches waiting for (or held by) a worker."""
        return f"{self.prefix}:work"

    @property
    def enqueued(self) -> str:
        """The set of every chunk id ever added to the work stream (enqueue once)."""
        return f"{self.prefix}:work:enqueued"

    @property
    def progress(self) -> str:
        """A hash: entries and chunks enqueued, settled, dead-lettered; whether input ended."""
        return f"{self.prefix}:work:progress"

    @property
    def dead(self) -> str:
        """The dead-letter stream: entries delivered too often, with the reason."""
        return f"{self.prefix}:work:dead"

    @property
    def work_over(self) -> str:
        """The channel on which the settle that ends the job says so: a notice that wakes
        the workers' blocked reads; the progress hash stays the truth."""
        return f"{self.prefix}:work:over"

    @property
    def intake(self) -> str:
        """The lease of the worker reading the run's input (`intake_lease`)."""
        return f"{self.prefix}:work:intake"

    @property
    def input_notice(self) -> str:
        """The channel on which the input's reader says it gave its lease back, and the
        queue's marker that the input is all enqueued."""
        return f"{self.prefix}:work:input"

    @property
    def results(self) -> str:
        """The stream of result and failure rows, read by the job's collector."""
        return f"{self.prefix}:results"

    @property
    def done(self) -> str:
        """The set of chunk ids whose result the collector stored: never enqueued again."""
        return f"{self.prefix}:done"

    @property
    def texts(self) -> str:
        """A hash: each text key sent in the run → the chunk sent for it, or `=` and
        that chunk once its answer is stored (`shared_same_text`)."""
        return f"{self.prefix}:texts"

    @property
    def text_holders(self) -> str:
        """A hash: each chunk sent for a text → that text's key, until its row is stored."""
        return f"{self.prefix}:texts:holders"

    def text_waiting(self, holder: str) -> str:
        """The list of chunks (encoded) waiting for the answer of chunk `holder`'s text."""
        return f"{self.prefix}:texts:waiting:{holder}"

    @property
    def texts_copied(self) -> str:
        """The set of chunks stored as a copy of another chunk's answer in the run."""
        return f"{self.prefix}:texts:copied"

    @property
    def texts_unanswered(self) -> str:
        """The set of chunks stored as failed because the chunk sent for their text failed."""
        return f"{self.prefix}:texts:unanswered"

    @property
    def targets(self) -> str:
        """A crawl job's stream of sites waiting for (or held by) a worker."""
        return f"{self.prefix}:crawl:targets"

    @property
    def replays(self) -> str:
        """A crawl job's stream of sites an earlier run stored, for a worker beside the
        store to replay (`target_stream`)."""
        return f"{self.prefix}:crawl:replays"

    @property
    def targets_enqueued(self) -> str:
        """The set of every target URL ever added to the targets stream (enqueue once)."""
        return f"{self.prefix}:crawl:enqueued"

    @property
    def crawl_progress(self) -> str:
        """A hash: targets enqueued, crawled, dead-lettered; whether the file is all in."""
        return f"{self.prefix}:crawl:progress"

    @property
    def crawl_dead(self) -> str:
        """The targets' dead-letter stream: sites delivered too often, with the reason."""
        return f"{self.prefix}:crawl:dead"

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key of the job's work and results (to delete a finished job's)."""
        return (
            self.work,
            self.enqueued,
            self.progress,
            self.dead,
            self.results,
            self.done,
            self.texts,
            self.text_holders,
            self.texts_copied,
            self.texts_unanswered,
            self.targets,
            self.replays,
            self.targets_enqueued,
            self.crawl_progress,
            self.crawl_dead,
        )

    # Consumer groups: the workers on `work`, the collector on `results`, the crawlers
    # on `targets` and `replays`.
    work_group: ClassVar[str] = "workers"
    results_group: ClassVar[str] = "collectors"
    crawl_group: ClassVar[str] = "crawlers"
