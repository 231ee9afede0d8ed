"""`crawldeck run/demo --metrics`: real subprocesses scraped over HTTP while they run.

The run prints its snapshots as JSON status lines (`--json`), every
`--interval` seconds, the same interval at which the endpoint renews the
snapshot it serves; a scrape taken between two status lines must sit between
them, figure by figure.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.engine.observe.test_metrics_endpoint import CRAWL_FAMILIES, FAMILIES, Scrape
from tests.engine.test_cli import (
    RUN_TIMEOUT_S,
    Background,
    count_rows,
    crawldeck,
    in_background,
    write_job,
)

INTERVAL_S = 0.2
FAST_SIMULATOR = "simulator.latency_s=[0.05, 0.1]"
SIM_SECRET = re.compile(r"sim-[0-9a-f]{24}")  # the throwaway secrets the simulator's keys get


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape_when(
    port: int, run: Background, ready: Callable[[Scrape], bool], what: str
) -> tuple[float, Scrape]:
    """Scrape until `ready` holds, while the run goes on; (when it was asked, the scrape)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        assert run.proc.poll() is None, f"the run ended before {what}: {run.stderr}"
        assert time.monotonic() < deadline, f"no {what} after {RUN_TIMEOUT_S}s"
        asked = time.time()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                scraped = Scrape(reply.read().decode("utf-8"))
        except (urllib.error.URLError, ConnectionError):  # not listening yet
            scraped = None
        if scraped is not None and ready(scraped):
            return asked, scraped
        time.sleep(0.05)


def status_records(run: Background) -> list[dict[str, Any]]:
    """The snapshots the run has printed as JSON status lines so far."""
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return [r for r in records if r["type"] == "status"]


def status_lines_around(run: Background, taken_at: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The last status line taken before `taken_at` and the first after it (waits for it)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        records = status_records(run)
        if any(r["taken_at"] >= taken_at for r in records):
            break
        assert time.monotonic() < deadline, "no status line after the scrape"
        time.sleep(0.05)
    before = [r for r in records if r["taken_at"] <= taken_at]
    after = [r for r in records if r["taken_at"] >= taken_at]
    assert before, "no status line before the scrape"
    return before[-1], after[0]


def running_with_done(scraped: Scrape) -> bool:
    families = scraped.families
    return (
        "crawldeck_job_state" in families
        and scraped.value("crawldeck_job_state", crawldeck_job_state="running") == 1.0
        and scraped.labelled("crawldeck_chunks", "state")["done"] > 0
    )


def assert_between(scraped: Scrape, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Every counter in the scrape lies between the status lines around it."""

    def check(name: str, value: float, low: float, high: float) -> None:
        assert low <= value <= high, f"{name}: {value} not within [{low}, {high}]"

    done = scraped.labelled("crawldeck_chunks", "state")["done"]
    check("done", done, before["counts"]["done"], after["counts"]["done"])
    check(
        "requests",
        scraped.value("crawldeck_requests_total"),
        before["requests"],
        after["requests"],
    )
    check(
        "cost",
        scraped.value("crawldeck_cost_usd_total"),
        before["cost_usd"],
        after["cost_usd"],
    )
    check(
        "answers",
        scraped.value("crawldeck_request_latency_seconds_count"),
        before["latency_histogram"]["cumulative"][-1],
        after["latency_histogram"]["cumulative"][-1],
    )
    check(
        "prompt tokens",
        scraped.labelled("crawldeck_tokens_total", "kind")["prompt"],
        before["prompt_tokens"],
        after["prompt_tokens"],
    )
    keys_after = {k["alias"]: k for k in after["keys"]}
    for key in before["keys"]:
        labels = {"provider": key["provider"], "key_alias": key["alias"]}
        check(
            f"requests on {key['alias']}",
            scraped.value("crawldeck_key_requests_total", **labels),
            key["requests"],
            keys_after[key["alias"]]["requests"],
        )


def assert_no_secret_in(text: str, run: Background) -> None:
    assert SIM_SECRET.search(text) is None
    for record in status_records(run):
        for key in record["keys"]:
            assert key["masked_secret"] not in text


def test_a_headless_run_serves_metrics_that_match_its_status_lines(tmp_path: Path) -> None:
    job = write_job(tmp_path, records=100, latency_s=(0.1, 0.2), concurrency=2)
    port = free_port()
    with in_background(
        "run", job, "--json", "--interval", str(INTERVAL_S), "--metrics", f"127.0.0.1:{port}",
        cwd=tmp_path,
    ) as run:  # fmt: skip
        asked, mid = scrape_when(port, run, running_with_done, "chunks done")

        assert set(mid.families) >= FAMILIES, FAMILIES - set(mid.families)
        taken_at = mid.value("crawldeck_snapshot_timestamp_seconds")
        # The endpoint served the snapshot of that moment: at most one interval old.
        assert asked - INTERVAL_S - 1.0 <= taken_at <= time.time()
        before, after = status_lines_around(run, taken_at)
        assert after["taken_at"] - before["taken_at"] <= 2 * INTERVAL_S + 1.0
        assert_between(mid, before, after)
        assert_no_secret_in(mid.text, run)

        assert run.wait() == 0
    assert f"crawldeck: metrics at http://127.0.0.1:{port}/metrics" in run.stderr
    assert count_rows(tmp_path / "results.db") == 100
    with pytest.raises(ConnectionRefusedError):  # the endpoint stopped with the job
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_the_crawl_demo_serves_its_crawl_outcomes(tmp_path: Path) -> None:
    port = free_port()
    with in_background(
        "demo", "--crawl", "--sites", "20", "--json", "--interval", str(INTERVAL_S),
        "--metrics", str(port), "--set", FAST_SIMULATOR,
        cwd=tmp_path,
    ) as run:  # fmt: skip

        def pages_fetched(scraped: Scrape) -> bool:
            return (
                "crawldeck_crawl_pages" in scraped.families
                and scraped.labelled("crawldeck_crawl_pages_total", "outcome").get("fetched", 0) > 0
            )

        _, mid = scrape_when(port, run, pages_fetched, "fetched pages")

        assert set(mid.families) >= FAMILIES | CRAWL_FAMILIES
        before, after = status_lines_around(run, mid.value("crawldeck_snapshot_timestamp_seconds"))
        fetched = mid.labelled("crawldeck_crawl_pages_total", "outcome")["fetched"]
        low, high = (dict(r["crawl"]["outcomes"]).get("fetched", 0) for r in (before, after))
        assert low <= fetched <= high
        started = mid.value("crawldeck_crawl_targets_started_total")
        assert before["crawl"]["targets_started"] <= started <= after["crawl"]["targets_started"]
        assert mid.value("crawldeck_crawl_targets") == 20
        assert_no_secret_in(mid.text, run)

        # One synthetic site times out only after 10 s: stop now instead of waiting for it.
        run.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while "crawldeck: draining" not in run.stderr:
            assert time.monotonic() < deadline, run.stderr
            time.sleep(0.05)
        run.proc.send_signal(signal.SIGINT)
        run.wait()


def test_a_taken_port_is_one_line_naming_the_flag_and_nothing_runs(tmp_path: Path) -> None:
    job = write_job(tmp_path, records=20)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = crawldeck("run", job, "--headless", "--metrics", f"127.0.0.1:{port}", cwd=tmp_path)

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"crawldeck: --metrics 127.0.0.1:{port}: address already in use"
    ]
    assert count_rows(tmp_path / "results.db") == 0


def test_a_metrics_address_without_a_host_is_refused_before_anything_runs(tmp_path: Path) -> None:
    job = write_job(tmp_path, records=20)
    done = crawldeck("run", job, "--headless", "--metrics", ":9464", cwd=tmp_path)

    assert done.returncode == 2
    assert "argument --metrics: ':9464': name the host, e.g. 127.0.0.1:9464" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results.db").exists()


def test_run_help_lists_the_metrics_flag(tmp_path: Path) -> None:
    shown = crawldeck("run", "--help", cwd=tmp_path)
    assert shown.returncode == 0
    assert "--metrics [HOST:]PORT" in shown.stdout
    assert "127.0.0.1" in shown.stdout
