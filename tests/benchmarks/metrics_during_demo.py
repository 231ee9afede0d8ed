"""The metrics endpoint scraped during a demo run, next to the snapshots of that moment.

    python -m tests.benchmarks.metrics_during_demo [--crawl] [--scrapes N]

Runs `crawldeck demo --headless --json --metrics PORT` (the transcripts, or
with `--crawl` the synthetic sites) in a temporary folder, scrapes
`/metrics` N times while it runs (default 4), parses each scrape with
prometheus-client's own parser and prints, per scrape: how old the served
snapshot was, which of the listed metric families are missing (none
should be), and the main figures side by side with the JSON status lines
printed just before and just after the snapshot the scrape served.  Each
scraped figure must lie between the two; a line that doesn't says
`OUTSIDE`.  The demo is slowed (2 requests in flight, answers in 0.3–0.6 s)
so there is a run to scrape.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.engine.observe.test_metrics_endpoint import CRAWL_FAMILIES, FAMILIES, Scrape
from tests.engine.test_cli import Background, in_background
from tests.engine.test_cli_metrics import free_port, scrape_when, status_lines_around

INTERVAL_S = 0.5

# (label, the figure in a scrape, the same figure in a status line)
FIGURES: tuple[tuple[str, Callable[[Scrape], float], Callable[[dict[str, Any]], float]], ...] = (
    (
        "chunks done",
        lambda s: s.labelled("crawldeck_chunks", "state")["done"],
        lambda r: r["counts"]["done"],
    ),
    ("requests", lambda s: s.value("crawldeck_requests_total"), lambda r: r["requests"]),
    (
        "429s",
        lambda s: s.value("crawldeck_requests_rate_limited_total"),
        lambda r: r["rate_limited"],
    ),
    (
        "answers (histogram count)",
        lambda s: s.value("crawldeck_request_latency_seconds_count"),
        lambda r: r["latency_histogram"]["cumulative"][-1],
    ),
    (
        "prompt tokens",
        lambda s: s.labelled("crawldeck_tokens_total", "kind")["prompt"],
        lambda r: r["prompt_tokens"],
    ),
    (
        "completion tokens",
        lambda s: s.labelled("crawldeck_tokens_total", "kind")["completion"],
        lambda r: r["completion_tokens"],
    ),
    ("cost usd", lambda s: s.value("crawldeck_cost_usd_total"), lambda r: r["cost_usd"]),
    (
        "requests on sim-main",
        lambda s: s.value("crawldeck_key_requests_total", provider="sim", key_alias="sim-main"),
        lambda r: next(k["requests"] for k in r["keys"] if k["alias"] == "sim-main"),
    ),
)
CRAWL_FIGURES: tuple[
    tuple[str, Callable[[Scrape], float], Callable[[dict[str, Any]], float]], ...
] = (
    (
        "pages fetched",
        lambda s: s.labelled("crawldeck_crawl_pages_total", "outcome").get("fetched", 0.0),
        lambda r: dict(r["crawl"]["outcomes"]).get("fetched", 0),
    ),
    (
        "targets finished",
        lambda s: s.value("crawldeck_crawl_targets_finished_total"),
        lambda r: r["crawl"]["targets_finished"],
    ),
)


def report(n: int, asked: float, scraped: Scrape, run: Background, crawl: bool) -> bool:
    """Print one scrape beside the status lines around it; True if it is consistent."""
    taken_at = scraped.value("crawldeck_snapshot_timestamp_seconds")
    expected = FAMILIES | (CRAWL_FAMILIES if crawl else set())
    missing = sorted(expected - set(scraped.families))
    before, after = status_lines_around(run, taken_at)
    state = next(
        state
        for s in scraped.families["crawldeck_job_state"].samples
        if s.value == 1.0
        for state in [s.labels["crawldeck_job_state"]]
    )
    print(
        f"\nscrape {n}: state {state}, snapshot {asked - taken_at:+.2f} s old when asked "
        f"(renewed every {INTERVAL_S} s); {len(scraped.families)} families, "
        f"missing: {', '.join(missing) or 'none'}"
    )
    print(f"  {'figure':<28}{'status before':>16}{'scrape':>16}{'status after':>16}")
    ok = not missing
    for label, in_scrape, in_status in FIGURES + (CRAWL_FIGURES if crawl else ()):
        low, value, high = in_status(before), in_scrape(scraped), in_status(after)
        inside = low <= value <= high
        ok = ok and inside
        mark = "" if inside else "  OUTSIDE"
        print(f"  {label:<28}{low:>16.6g}{value:>16.6g}{high:>16.6g}{mark}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crawl", action="store_true", help="the crawl demo (synthetic sites)")
    parser.add_argument("--scrapes", type=int, default=4)
    args = parser.parse_args()
    port = free_port()
    flags = [
        "demo", "--headless", "--json", "--interval", str(INTERVAL_S), "--metrics", str(port),
        "--set", "preset.concurrency=2", "--set", "preset.adaptive_concurrency=false",
        "--set", "simulator.latency_s=[0.3, 0.6]",
    ]  # fmt: skip
    if args.crawl:
        flags += ["--crawl", "--sites", "200"]
    all_ok = True
    with tempfile.TemporaryDirectory() as folder, in_background(*flags, cwd=Path(folder)) as run:
        print(f"crawldeck {' '.join(flags)}")
        for n in range(1, args.scrapes + 1):
            asked, scraped = scrape_when(
                port,
                run,
                lambda s: (
                    "crawldeck_job_state" in s.families
                    and s.value("crawldeck_job_state", crawldeck_job_state="running") == 1.0
                    and s.value("crawldeck_requests_total") > 0
                ),
                "a running job",
            )
            all_ok = report(n, asked, scraped, run, args.crawl) and all_ok
            time.sleep(1.5)
        run.proc.terminate()  # drains: enough has been seen
        run.wait()
    print(f"\nevery scrape had every family and sat between its status lines: {all_ok}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
