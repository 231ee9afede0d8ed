"""`crawldeck plan`'s output: the plan's record as readable tables (rich), or as one JSON object.

The figures are the engine's (`JobPlan.record()`); this only lays them out,
so the table and `--json` always say the same.
"""

from __future__ import annotations

import json
from typing import IO, Any

from rich.console import Console
from rich.table import Table


def plan_json(record: dict[str, Any], out: IO[str]) -> None:
    """The plan as one JSON object on a line of its own."""
    out.write(json.dumps(record) + "\n")


def _number(value: float | None, digits: int = 0) -> str:
    return "unknown" if value is None else f"{value:,.{digits}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value >= 120:
        return f"{value / 60:,.1f} min ({value:,.0f} s)"
    return f"{value:,.1f} s"


def _pairs(title: str, rows: list[tuple[str, str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    for row in rows:
        table.add_row(*row)
    return table


def plan_tables(record: dict[str, Any], out: IO[str]) -> None:
    """The plan as tables: work, tokens and cost, time, keys, one more key."""
    console = Console(file=out, highlight=False, soft_wrap=False)
    work, tokens, cost, time = record["input"], record["tokens"], record["cost_usd"], record["time"]
    console.print(f"Plan for {record['job']} (store {record['store']}); nothing was sent.\n")

    rows = [
        ("chunks", _number(work["chunks"]), "read from the input as a run reads it"),
        ("already done", _number(work["already_done"]), "results in the store: skipped"),
        ("duplicates", _number(work["duplicates"]), "repeats: one result serves both"),
        ("to send", _number(work["pending_chunks"]), "chunks"),
        ("requests", _number(record["requests"]), f"{record['chunks_per_request']:g} chunks each"),
    ]
    if work["records_skipped"]:
        rows.append(("records skipped", _number(work["records_skipped"]), "unreadable input"))
    crawl = work["crawl"]
    if crawl is not None:
        rows.insert(
            0, ("crawl targets", _number(crawl["targets"]), f"{crawl['pages']} stored pages")
        )
        rows.insert(
            1,
            (
                "without pages",
                _number(crawl["targets_without_pages"]),
                "not crawled yet (or to fetch again): not counted below",
            ),
        )
    console.print(_pairs("Work", rows))
    console.print()
    console.print(
        _pairs(
            "Tokens and cost",
            [
                ("input (estimate)", _number(tokens["input_estimate"]), "admission's estimate"),
                ("input (billed)", _number(tokens["input_billed"]), tokens["input_billed_source"]),
                ("output", _number(tokens["output"]), tokens["output_source"]),
                (
                    "charged a request",
                    _number(tokens["charged_per_request"]),
                    "prompt, at admission",
                ),
                ("cost online", f"${cost['online']:,.4f}", ""),
                ("cost in batch mode", f"${cost['batch']:,.4f}", ""),
            ],
        )
    )
    console.print()
    console.print(
        _pairs(
            "Time",
            [
                ("time", _seconds(time["seconds"]), f"{time['binds']} binds"),
                (
                    "by the keys' limits",
                    _seconds(time["limits_s"]),
                    f"{_number(time['requests_per_min'], 1)} requests/min, a "
                    f"{time['burst_s']:g} s burst ({time['burst_source']})",
                ),
                (
                    "by concurrency",
                    _seconds(time["concurrency_s"]),
                    f"{time['concurrency_ceiling']} in flight, {time['latency_mean_s']:.2f} s mean "
                    f"latency ({time['latency_source']})",
                ),
                ("by batch_delay_s", _seconds(time["batch_delay_s"]), ""),
            ],
        )
    )
    console.print(f"Binds: {time['binding']}.")
    console.print(
        "At the tail a batch slow to answer is sent twice (the first answer wins): "
        "those second requests are not counted here."
    )
    console.print()
    keys = Table(title="Keys", title_justify="left")
    for name in ("provider", "key", "RPM", "TPM", "by TPM/min", "req/min", "binds", "share"):
        keys.add_column(name, justify="left" if name in ("provider", "key", "binds") else "right")
    for key in record["keys"]:
        keys.add_row(
            key["provider"],
            key["alias"],
            _number(key["rpm"]),
            _number(key["tpm"]),
            _number(key["requests_per_min_by_tpm"], 1),
            _number(key["requests_per_min"], 1),
            key["binds"].upper(),
            f"{key['share']:.0%}",
        )
    console.print(keys)
    more = Table(title="One more key", title_justify="left")
    for name in ("like", "provider", "RPM", "TPM", "time", "saves", "then binds"):
        more.add_column(
            name, justify="left" if name in ("like", "provider", "then binds") else "right"
        )
    for row in record["one_more_key"]:
        more.add_row(
            row["like"],
            row["provider"],
            _number(row["rpm"]),
            _number(row["tpm"]),
            _seconds(row["time_s"]),
            _seconds(row["saves_s"]),
            row["binds"],
        )
    console.print(more)
