"""The `crawldeck` command line.

`run` and `demo` drive the engine under the dashboard in a terminal, or
headless (status lines) with `--headless`, `--json` or when output is piped;
`simulate` serves the bundled provider simulator; `export` writes stored
results out.  Textual is imported only by the commands that show a screen,
so headless runs over SSH never load it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path

from engine.config_file import ConfigError, load_config
from engine.engine import Engine
from engine.headless_reporter import HeadlessReporter
from engine.inputs import InputError, iter_documents
from engine.key_secrets import resolve_secrets, served_by_simulator
from engine.settings import JobConfig
from engine.simulator_launch import launched_simulator, simulator_arguments
from engine.snapshot import JobState


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crawldeck", description="Async LLM crawl engine that runs at the rate limit."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def job_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", help="a preset name from the job file, or a preset .toml file")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a setting, e.g. --set preset.concurrency=32 (repeatable)",
        )
        p.add_argument("--headless", action="store_true", help="no dashboard: status lines")
        p.add_argument("--json", action="store_true", help="status as JSON lines (headless)")
        p.add_argument("--interval", type=float, default=5.0, help="seconds between status lines")

    run = sub.add_parser("run", help="run a job file")
    run.add_argument("job", type=Path, help="the job's TOML file")
    job_flags(run)

    demo = sub.add_parser("demo", help="run the bundled sample against the bundled simulator")
    job_flags(demo)
    demo.add_argument(
        "--store", default="crawldeck-demo.db", help="where the demo keeps its results"
    )

    sim = sub.add_parser("simulate", help="serve the OpenAI-compatible simulator for a job")
    sim.add_argument("job", type=Path)
    sim.add_argument("--port", type=int, default=8765)

    export = sub.add_parser("export", help="write stored results as JSONL or CSV")
    export.add_argument("source", type=Path, help="a job file or a results database")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("-o", "--output", type=Path, help="output file (default: stdout)")
    export.add_argument("--failures", action="store_true", help="include failed chunks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            config = load_config(args.job, preset=args.preset, overrides=args.overrides)
            if _wants_dashboard(args):
                return asyncio.run(run_dashboard(config))
            return asyncio.run(run_job(config, args.json, args.interval))
        if args.command == "demo":
            config = load_demo_config(args.preset, args.overrides, args.store)
            if _wants_dashboard(args):
                return asyncio.run(run_dashboard(config))
            return asyncio.run(run_job(config, args.json, args.interval))
        if args.command == "simulate":
            return simulate(args.job, args.port)
        if args.command == "export":
            return export(args.source, args.format, args.output, args.failures)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def load_demo_config(preset: str | None, overrides: Sequence[str], store: str) -> JobConfig:
    demo = resources.files("engine.sample").joinpath("demo.toml")
    with resources.as_file(demo) as path:
        config = load_config(path, preset=preset, overrides=overrides)
    # The demo's results go where the user is, not into the installed package.
    if not any(o.startswith("job.store=") for o in overrides):
        config = replace(config, job=replace(config.job, store=str(Path(store).resolve())))
    return config


@contextlib.asynccontextmanager
async def _providers(config: JobConfig) -> AsyncIterator[tuple[dict[str, str], dict[str, str]]]:
    """Secrets and base-URL overrides, with the simulator started if the job asks for it."""
    simulated = config.simulator.autostart and any(served_by_simulator(p) for p in config.providers)
    secrets = resolve_secrets(config, os.environ, simulated=simulated)
    if simulated:
        async with launched_simulator(config, secrets) as urls:
            yield secrets, urls
    else:
        yield secrets, {}


async def run_job(config: JobConfig, as_json: bool, interval: float) -> int:
    """Run headless: status lines, Ctrl-C drains, a second Ctrl-C stops now."""
    try:
        # Only finds the first input file: a missing input fails here, in one
        # line, before the simulator starts, not as an engine warning in the log.
        iter_documents(config.job)
    except InputError as exc:
        print(f"crawldeck: {exc}", file=sys.stderr)
        return 2
    async with _providers(config) as (secrets, urls):
        engine = Engine(config, secrets, base_urls=urls)
        reporter = HeadlessReporter(engine.snapshot, interval_s=interval, as_json=as_json)
        loop = asyncio.get_running_loop()
        interrupts = 0

        def on_interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                print("crawldeck: draining (Ctrl-C again to stop now)", file=sys.stderr)
                engine.drain()
            else:
                engine.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, on_interrupt)
        async with asyncio.TaskGroup() as tg:
            reporting = tg.create_task(reporter.run())
            try:
                state = await engine.run()
            finally:
                reporting.cancel()
        reporter.emit_once()
        if engine.failure_reason:
            print(f"crawldeck: {engine.failure_reason}", file=sys.stderr)
        print(engine.summary_line(), file=sys.stderr)
        return 0 if state is JobState.DONE else 1


def _wants_dashboard(args: argparse.Namespace) -> bool:
    """The dashboard needs a terminal; pipes, logs and `--headless` get status lines."""
    return not args.headless and not args.json and sys.stdout.isatty()


async def run_dashboard(config: JobConfig) -> int:
    """Run the job under the dashboard; quitting there stops the job."""
    # Textual is loaded here only, so headless runs never import it.
    from tui.app import CrawldeckApp

    try:
        iter_documents(config.job)
    except InputError as exc:
        print(f"crawldeck: {exc}", file=sys.stderr)
        return 2
    async with _providers(config) as (secrets, urls):
        engine = Engine(config, secrets, base_urls=urls)
        state = await CrawldeckApp(engine).run_async()
        if engine.failure_reason:
            print(f"crawldeck: {engine.failure_reason}", file=sys.stderr)
        print(engine.summary_line(), file=sys.stderr)
        return 0 if state is JobState.DONE else 1


def simulate(job: Path, port: int) -> int:
    from engine.simulator import main as simulator_main

    config = load_config(job)
    limits = [k for p in config.providers for k in p.keys]
    rpm = min((k.rpm for k in limits if k.rpm), default=None)
    tpm = min((k.tpm for k in limits if k.tpm), default=None)
    argv = [
        *simulator_arguments(config.simulator, port=port),
        "--default-limits",
        f"{rpm or '-'}:{tpm or '-'}",
    ]
    return simulator_main(argv)


def export(source: Path, fmt: str, output: Path | None, failures: bool) -> int:
    from engine.export import export_results

    db = Path(load_config(source).job.store) if source.suffix == ".toml" else source
    if not db.exists():
        print(f"crawldeck: no results database at {db}", file=sys.stderr)
        return 2
    if output is None:
        count = export_results(db, sys.stdout, fmt, include_failures=failures)  # type: ignore[arg-type]
    else:
        count = export_results(db, output, fmt, include_failures=failures)  # type: ignore[arg-type]
        print(f"crawldeck: wrote {count} rows to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
