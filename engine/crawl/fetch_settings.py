"""How the crawler fetches: limits, timeouts and manners, as one immutable value."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version


def _crawldeck_version() -> str:
    try:
        return version("crawldeck")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0"


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """Fetch limits and politeness.  Every default is what a first crawl should use.

    `concurrency` caps requests in flight across all hosts; `per_host` and
    `politeness_delay_s` cap and space requests to one host (a robots.txt
    Crawl-delay that is larger wins).  `total_timeout_s` bounds one request
    from connect to the last body byte, so a server that drips a byte at a
    time cannot hold a slot forever.  `allow_addresses` lists CIDRs or host
    names the address policy admits even though they are not public.
    """

    concurrency: int = 64
    per_host: int = 2
    politeness_delay_s: float = 1.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 20.0
    total_timeout_s: float = 30.0
    max_body_bytes: int = 5_000_000
    max_redirects: int = 5
    content_types: tuple[str, ...] = ("text/html", "application/xhtml+xml", "text/plain")
    respect_robots: bool = True
    user_agent: str = "crawldeck/{version} (+{contact})"
    contact: str = ""
    allow_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_host < 1:
            raise ValueError("concurrency and per_host must be at least 1")
        if self.max_redirects < 0 or self.max_body_bytes < 1:
            raise ValueError("max_redirects must be >= 0 and max_body_bytes >= 1")
        timeouts = (self.connect_timeout_s, self.read_timeout_s, self.total_timeout_s)
        if min(timeouts) <= 0:
            raise ValueError(f"timeouts must be positive, got {timeouts}")
        if self.politeness_delay_s < 0:
            raise ValueError(
                f"politeness_delay_s must not be negative, got {self.politeness_delay_s}"
            )

    @property
    def user_agent_header(self) -> str:
        """The User-Agent sent: the template filled in; without a contact, no `(+…)` part."""
        filled = self.user_agent.replace("{version}", _crawldeck_version())
        if self.contact:
            return filled.replace("{contact}", self.contact)
        return filled.replace(" (+{contact})", "").replace("{contact}", "")
