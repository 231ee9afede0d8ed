"""What became of one fetch: a closed set of outcomes and the result value.

Every way a site can fail maps to exactly one outcome, so the fetcher never
raises for a site's problem and the dashboard can count them by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FetchOutcome(StrEnum):
    """How a fetch ended.  The values are stable names for counters and the store."""

    FETCHED = "fetched"
    REDIRECTED = "redirected"  # fetched, after one or more redirects
    ROBOTS_BLOCKED = "robots_blocked"
    TIMED_OUT = "timed_out"
    DNS_FAILURE = "dns_failure"
    REFUSED = "refused"  # connection refused, reset or dropped without an answer
    TOO_LARGE = "too_large"
    NOT_HTML = "not_html"
    EMPTY_TEXT = "empty_text"  # set by extraction: the page had no usable text
    EXTRACTION_TIMED_OUT = "extraction_timed_out"  # set by extraction: past its time limit
    EXTRACTION_FAILED = (
        "extraction_failed"  # set by extraction: the parser raised, or its worker died
    )
    HTTP_ERROR = "http_error"  # a final status that is not 2xx
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BLOCKED_ADDRESS = "blocked_address"  # the address policy refused every address
    TLS_ERROR = "tls_error"
    INVALID_URL = "invalid_url"

    @property
    def has_page(self) -> bool:
        """True when the result carries a page body worth extracting."""
        return self in (FetchOutcome.FETCHED, FetchOutcome.REDIRECTED)


# Outcomes a rerun tries again; any other stored outcome is the site's answer.
# EXTRACTION_TIMED_OUT and EXTRACTION_FAILED are not retried: the same bytes
# would run the parser into the same wall, costing a killed worker (and the
# time limit) on every rerun.
RETRIED_OUTCOMES: frozenset[FetchOutcome] = frozenset(
    {
        FetchOutcome.TIMED_OUT,
        FetchOutcome.REFUSED,
        FetchOutcome.DNS_FAILURE,
        FetchOutcome.HTTP_ERROR,
        FetchOutcome.TLS_ERROR,
    }
)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One fetch, finished.

    `final_url` is where the body came from (after redirects); `status` is
    None when no HTTP answer arrived; `content_type` is the raw header value
    (its charset parameter is the extractor's business); `body` is empty
    unless the outcome has a page; `error` explains a failure in words.
    """

    url: str
    final_url: str
    outcome: FetchOutcome
    status: int | None
    content_type: str
    body: bytes
    redirects: int
    elapsed_s: float
    error: str = ""
