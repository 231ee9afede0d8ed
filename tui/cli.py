"""The `crawldeck` command line.

`run` and `demo` drive the engine under the dashboard in a terminal, or
headless (status lines) with `--headless`, `--json` or when output is piped;
`simulate` serves the bundled provider simulator; `export` writes stored
results out.  A headless run serves a control socket in the job's state
folder: `status` prints one snapshot of it, `attach` opens the dashboard on
it, and leaving `attach` leaves the job running.  Textual is imported only
by the commands that show a screen, so headless runs over SSH never load it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from engine.api import (
    ConfigError,
    ControlClient,
    ControlError,
    ControlServer,
    ControlServerError,
    CrawlSettings,
    HeadlessReporter,
    InputError,
    JobConfig,
    JobControls,
    MetricsAddress,
    MetricsBindError,
    Snapshot,
    StoreError,
    StoreInUseError,
    demo_job_file,
    engine_memory_floor_bytes,
    input_present,
    iter_documents,
    job_exit_status,
    launched_simulator,
    load_config,
    resolve_secrets,
    served_by_simulator,
    simulator_arguments,
    snapshot_record,
    socket_path_for_store,
    state_folder_for_store,
    status_line,
)
from tui.closed_pipe import EXIT_CLOSED_PIPE, ClosedStdout, quiet_when_stdout_closes
from tui.fresh_start import FRESH_FLAG, nothing_left_notice, start_over
from tui.metrics_flag import METRICS_FLAG, add_metrics_flag, metrics_endpoint, metrics_published
from tui.process_exit import ending_process
from tui.version_flag import VersionFlag

if TYPE_CHECKING:
    from engine.api import ClusterJob, Engine

_DEMO_STORE = "crawldeck-demo.db"
_CRAWL_DEMO_STORE = "crawldeck-crawl-demo.db"
_VIEWER_LINGER_S = 0.5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crawldeck", description="Async LLM crawl engine that runs at the rate limit."
    )
    parser.add_argument("--version", action=VersionFlag)
    sub = parser.add_subparsers(dest="command", required=True)

    def config_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", help="a preset name from the job file, or a preset .toml file")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a setting, e.g. --set preset.concurrency=32 (repeatable)",
        )

    def job_flags(p: argparse.ArgumentParser) -> None:
        config_flags(p)
        p.add_argument("--headless", action="store_true", help="no dashboard: status lines")
        p.add_argument("--json", action="store_true", help="status as JSON lines (headless)")
        p.add_argument(
            "--interval",
            type=float,
            default=5.0,
            help="seconds between status lines (--metrics renews its snapshot as often, "
            "and at least every second)",
        )
        add_metrics_flag(p)
        p.add_argument(
            FRESH_FLAG,
            action="store_true",
            help="start over: the job's store is renamed with a timestamp (kept), a new one begun",
        )

    run = sub.add_parser("run", help="run a job file")
    run.add_argument("job", type=Path, help="the job's TOML file")
    job_flags(run)

    demo = sub.add_parser("demo", help="run the bundled sample against the bundled simulator")
    job_flags(demo)
    demo.add_argument(
        "--store",
        default=None,
        help=f"where the demo keeps its results (default: {_DEMO_STORE}, "
        f"or {_CRAWL_DEMO_STORE} with --crawl)",
    )
    demo.add_argument(
        "--crawl",
        action="store_true",
        help="crawl synthetic web sites served on loopback instead of reading transcripts",
    )
    demo.add_argument(
        "--sites", type=int, default=3204, help="how many synthetic sites --crawl crawls"
    )

    plan = sub.add_parser(
        "plan", help="requests, tokens, cost and time of a job, worked out without sending any"
    )
    plan.add_argument("job", type=Path, help="the job's TOML file")
    config_flags(plan)
    plan.add_argument("--json", action="store_true", help="the plan as one JSON object")
    plan.add_argument(
        "--output-tokens",
        type=float,
        metavar="N",
        help="output tokens a chunk brings back, when the store holds no results yet",
    )
    plan.add_argument(
        "--latency-s",
        type=float,
        metavar="S",
        help="a request's latency, when the store holds no results yet",
    )
    plan.add_argument(
        "--burst-s",
        type=float,
        metavar="S",
        help="seconds of its limits a provider's bucket grants up front (OpenAI's: 60)",
    )

    sim = sub.add_parser("simulate", help="serve the OpenAI-compatible simulator for a job")
    sim.add_argument("job", type=Path)
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set simulator.burst_s=1 (repeatable)",
    )

    where = "a job file, a results database, its state folder or the control socket"
    status = sub.add_parser("status", help="print one status line of a running headless job")
    status.add_argument("target", nargs="?", type=Path, help=f"{where} (default: the demo's)")
    status.add_argument("--json", action="store_true", help="the snapshot as one JSON object")

    attach = sub.add_parser("attach", help="open the dashboard on a running headless job")
    attach.add_argument("target", nargs="?", type=Path, help=f"{where} (default: the demo's)")

    baseline = sub.add_parser(
        "baseline", help="the drift baseline: show it, save a run's, or clear the saved one"
    )
    baseline.add_argument("action", choices=("show", "save", "clear"))
    baseline.add_argument("source", type=Path, help="a job file or a results database")
    baseline.add_argument(
        "--id", type=int, default=None, help="save: which learned baseline (default: the newest)"
    )

    export = sub.add_parser("export", help="write stored results as JSONL or CSV")
    export.add_argument("source", type=Path, help="a job file or a results database")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("-o", "--output", type=Path, help="output file (default: stdout)")
    export.add_argument("--failures", action="store_true", help="include failed chunks")
    return parser


@quiet_when_stdout_closes
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            # Memory limits this process cannot run under are refused here, in one
            # line naming where they were set, before anything starts.
            config = load_config(
                args.job,
                preset=args.preset,
                overrides=args.overrides,
                memory_floor_bytes=engine_memory_floor_bytes(),
            )
            if args.fresh and config.cluster is not None:
                print(f"crawldeck: {FRESH_FLAG}: {_NO_FRESH_CLUSTER}", file=sys.stderr)
                return 2
            if args.fresh and (code := _fresh_start(config, None)) is not None:
                return code
            if _wants_dashboard(args):
                return asyncio.run(
                    run_dashboard(config, metrics=args.metrics, interval=args.interval)
                )
            return asyncio.run(run_job(config, args.json, args.interval, metrics=args.metrics))
        if args.command == "demo":
            if args.sites < 1:
                print("crawldeck: --sites must be at least 1", file=sys.stderr)
                return 2
            sites = args.sites if args.crawl else None
            store = args.store or (_CRAWL_DEMO_STORE if args.crawl else _DEMO_STORE)
            config = load_demo_config(args.preset, args.overrides, store, crawl=args.crawl)
            if args.fresh and (code := _fresh_start(config, sites)) is not None:
                return code
            if _wants_dashboard(args):
                return asyncio.run(
                    run_dashboard(
                        config, demo_sites=sites, metrics=args.metrics, interval=args.interval
                    )
                )
            return asyncio.run(
                run_job(config, args.json, args.interval, demo_sites=sites, metrics=args.metrics)
            )
        if args.command == "plan":
            # Loaded as `run` loads it: a bad file gets the same one-line errors.
            config = load_config(
                args.job,
                preset=args.preset,
                overrides=args.overrides,
                memory_floor_bytes=engine_memory_floor_bytes(),
            )
            return plan_job(config, args)
        if args.command == "simulate":
            return simulate(args.job, args.port, args.overrides)
        if args.command == "status":
            return status(_control_socket(args.target), args.json)
        if args.command == "attach":
            return asyncio.run(run_attach(_control_socket(args.target)))
        if args.command == "baseline":
            return asyncio.run(baseline_command(args.action, args.source, args.id))
        if args.command == "export":
            return export(args.source, args.format, args.output, args.failures)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except StoreError as exc:  # the engine said what is wrong and what to do: one line
        print(f"crawldeck: {exc}", file=sys.stderr)
        return 2
    except _CannotJoin as exc:  # the job's Redis is away or refuses this worker: one line
        print(f"crawldeck: {exc}", file=sys.stderr)
        return 2
    except MetricsBindError as exc:  # the port is taken (…), found before the job started
        print(f"crawldeck: {METRICS_FLAG} {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


_NO_FRESH_CLUSTER = (
    "a job shared through Redis is not started over from one worker (the others may be on "
    "it): give every worker a new [cluster] prefix and job.store instead, e.g. "
    "--set cluster.prefix=NAME --set job.store=NEW.db"
)


class _CannotJoin(Exception):
    """The job's Redis did not answer, or refused this worker, before anything ran."""


@contextlib.asynccontextmanager
async def _membership(config: JobConfig) -> AsyncIterator[ClusterJob | None]:
    """This process's place in the job's cluster of workers (None: the job runs alone here)."""
    if config.cluster is None:
        yield None
        return
    # Redis's client loads only for a job shared through it.
    from engine.api import RedisUnavailable, joined_cluster

    try:
        async with joined_cluster(config, os.environ) as cluster:
            assert cluster is not None
            print(f"crawldeck: {cluster.describe()}", file=sys.stderr)
            yield cluster
    except RedisUnavailable as exc:
        raise _CannotJoin(str(exc)) from None


async def _bound_control(job: JobControls, config: JobConfig, cluster: bool) -> ControlServer:
    """The job's control socket, bound (or not, said in one line: the job runs without it).

    A second worker of a cluster on this machine finds the job's socket taken
    by the first; it serves its own beside it, and either steers every worker.
    """
    path = socket_path_for_store(config.job.store)
    idle = config.engine.control_idle_timeout_s
    control = ControlServer(job, path, idle_timeout_s=idle)
    try:
        await control.bind()
    except ControlServerError as exc:
        if cluster:
            own = path.with_name(f"control-{os.getpid()}.sock")
            control = ControlServer(job, own, idle_timeout_s=idle)
            with contextlib.suppress(ControlServerError):
                await control.bind()
                print(
                    f"crawldeck: control socket {own} ({path.name} is another worker's; "
                    "either steers every worker)",
                    file=sys.stderr,
                )
                return control
        # The job matters more than its remote control: run without one.
        print(f"crawldeck: no control socket: {exc}", file=sys.stderr)
    return control


def _fresh_start(config: JobConfig, demo_sites: int | None) -> int | None:
    """`--fresh`: set the job's store aside before it runs (an exit code if that fails)."""
    if _input_problem(config, demo_sites) is not None:
        return None  # the run says what is wrong, and nothing is moved for a job that can't run
    try:
        print(f"crawldeck: {start_over(config.job.store)}", file=sys.stderr)
    except (StoreInUseError, OSError) as exc:
        print(f"crawldeck: {FRESH_FLAG}: {exc}", file=sys.stderr)
        return 2
    return None


def load_demo_config(
    preset: str | None, overrides: Sequence[str], store: str, *, crawl: bool = False
) -> JobConfig:
    """The bundled demo job: the sample transcripts, or (`crawl`) synthetic web sites."""
    with resources.as_file(demo_job_file()) as path:
        config = load_config(
            path, preset=preset, overrides=overrides, memory_floor_bytes=engine_memory_floor_bytes()
        )
    if crawl:
        # The sites are served on loopback by the bundled site server: the
        # address policy admits loopback for this job only, and every
        # site-NNNN.test name is pinned to it.
        config = replace(
            config,
            job=replace(config.job, name="sites-demo", input=""),
            crawl=CrawlSettings(
                targets="",  # written when the site server starts
                resolve={"*.test": "127.0.0.1"},
                allow_addresses=("127.0.0.0/8",),
                contact="crawldeck-demo@localhost",
                total_timeout_s=10.0,
            ),
        )
    # The demo's results go where the user is, not into the installed package.
    if not any(o.startswith("job.store=") for o in overrides):
        config = replace(config, job=replace(config.job, store=str(Path(store).resolve())))
    return config


@contextlib.asynccontextmanager
async def _job_services(
    config: JobConfig, demo_sites: int | None = None
) -> AsyncIterator[tuple[JobConfig, dict[str, str], dict[str, str]]]:
    """The job with its secrets and base-URL overrides, once what it needs is serving.

    Starts the provider simulator if the job asks for it, and for the crawl
    demo the synthetic site server, whose target list completes the job.
    """
    simulated = config.simulator.autostart and any(served_by_simulator(p) for p in config.providers)
    secrets = resolve_secrets(config, os.environ, simulated=simulated)
    async with contextlib.AsyncExitStack() as services:
        if demo_sites is not None and config.crawl is not None:
            from engine.api import launched_site_server

            folder = state_folder_for_store(config.job.store)
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            sites = await services.enter_async_context(
                launched_site_server(demo_sites, folder / "demo-sites.txt")
            )
            config = replace(config, crawl=replace(config.crawl, targets=str(sites.domains_file)))
        urls: dict[str, str] = {}
        if simulated:
            urls = await services.enter_async_context(launched_simulator(config, secrets))
        yield config, secrets, urls


def _input_problem(config: JobConfig, demo_sites: int | None) -> str | None:
    """A missing input, in one line, before any service starts (None: it is there)."""
    if config.crawl is not None:
        targets = Path(config.crawl.targets)
        if demo_sites is None and not targets.is_file():
            return f"crawl targets: no such file: {targets}"
        return None
    if config.cluster is not None and not input_present(config.job.input):
        return None  # a worker of a cluster works on what one that has the input enqueues
    try:
        # Only finds the first input file: a missing input fails here, in one
        # line, not as an engine warning in the log.
        iter_documents(config.job)
    except InputError as exc:
        return str(exc)
    return None


async def _store_problem(config: JobConfig) -> str | None:
    """Store trouble (locked, full, read-only, not a store), in one line, before services start."""
    from engine.api import Store

    try:
        await Store.probe(config.job.store)
    except StoreError as exc:
        return str(exc)
    return None


async def run_job(
    config: JobConfig,
    as_json: bool,
    interval: float,
    demo_sites: int | None = None,
    metrics: MetricsAddress | None = None,
) -> int:
    """Run headless: status lines, Ctrl-C drains, a second Ctrl-C stops now."""
    # The engine (httpx2, numpy, aiosqlite) loads only for commands that
    # run a job: `--help`, `--version` and `status` start in a fraction of it.
    from engine.api import Engine

    problem = _input_problem(config, demo_sites) or await _store_problem(config)
    if problem is not None:
        print(f"crawldeck: {problem}", file=sys.stderr)
        return 2
    async with (
        metrics_endpoint(metrics) as endpoint,  # first: a taken port ends it before anything starts
        _job_services(config, demo_sites) as (config, secrets, urls),
        _membership(config) as cluster,
    ):
        engine = Engine(config, secrets, base_urls=urls, cluster=cluster)
        # In a cluster the socket's controls steer every worker; Ctrl-C drains this one.
        steered: JobControls = engine if cluster is None else cluster.steering
        reporter = HeadlessReporter(engine.snapshot, interval_s=interval, as_json=as_json)
        loop = asyncio.get_running_loop()
        interrupts = 0
        stdout = ClosedStdout()

        async def report() -> None:
            with stdout:
                await reporter.run()
            if stdout.closed:
                # Nobody reads the status lines any more (`| head`): finish what
                # is in flight and store it, as the first Ctrl-C does, then end.
                print("crawldeck: stdout was closed: draining", file=sys.stderr)
                engine.drain()

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
        control = await _bound_control(steered, config, cluster is not None)
        try:
            async with (
                metrics_published(endpoint, engine.snapshot, interval),
                asyncio.TaskGroup() as tg,
            ):
                reporting = tg.create_task(report())
                serving = tg.create_task(control.serve()) if control.bound else None
                try:
                    state = await engine.run()
                    if serving is not None and control.client_count:
                        # Viewers poll a few times a second: let them see how it ended.
                        control.refresh()
                        await asyncio.sleep(_VIEWER_LINGER_S)
                finally:
                    reporting.cancel()
                    if serving is not None:
                        serving.cancel()
        finally:
            control.close()
        with stdout:
            reporter.emit_once()
        if engine.failure_reason:
            print(f"crawldeck: {engine.failure_reason}", file=sys.stderr)
        _print_summary(engine, config)
        if stdout.closed:
            return EXIT_CLOSED_PIPE
        return job_exit_status(state, engine.snapshot().counts)


def _print_summary(engine: Engine, config: JobConfig) -> None:
    """The closing summary, after one line saying so if there was nothing left to do."""
    notice = nothing_left_notice(engine.snapshot(), config.job.store)
    if notice is not None:
        print(f"crawldeck: {notice}", file=sys.stderr)
    if engine.budget_line:
        print(f"crawldeck: {engine.budget_line}", file=sys.stderr)
    print(engine.summary_line(), file=sys.stderr)


def _control_socket(target: Path | None) -> Path:
    """The control socket a `status`/`attach` argument names."""
    if target is None:
        return socket_path_for_store(Path(_DEMO_STORE).resolve())
    if target.suffix == ".toml":
        return socket_path_for_store(load_config(target).job.store)
    if target.is_dir():
        return target / "control.sock"
    if target.is_file():  # a results database
        return socket_path_for_store(target.resolve())
    return target


def status(socket_path: Path, as_json: bool) -> int:
    """One status line (or JSON object) of the job at the socket; 2 if none runs there."""

    async def fetch() -> Snapshot:
        async with await ControlClient.connect(socket_path) as client:
            return await client.snapshot()

    try:
        snap = asyncio.run(fetch())
    except ControlError as exc:
        print(f"crawldeck: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"type": "status", **snapshot_record(snap)}, default=str))
    else:
        print(status_line(snap))
    return 0


async def run_attach(socket_path: Path) -> int:
    """The dashboard on a job running elsewhere; quitting it leaves the job running."""
    # Textual is loaded here only, so headless runs never import it.
    from tui.app import CrawldeckApp
    from tui.remote_source import RemoteSource

    class AttachedApp(CrawldeckApp):
        """Quitting detaches: the job is not this process's to stop."""

        def request_quit(self) -> None:
            self.exit(self.source.snapshot().state)

    source = RemoteSource(socket_path)
    try:
        await source.start()
    except ControlError as exc:
        print(f"crawldeck: {exc}", file=sys.stderr)
        return 2
    try:
        await AttachedApp(source, refresh_hz=1.0 / source.refresh_s).run_async()
        await asyncio.wait_for(source.settled(), timeout=2.0)  # a last key press still lands
    except TimeoutError:
        pass
    finally:
        await source.close()
    if source.last_error:
        print(f"crawldeck: {source.last_error}", file=sys.stderr)
    return 0


def _wants_dashboard(args: argparse.Namespace) -> bool:
    """The dashboard needs a terminal; pipes, logs and `--headless` get status lines."""
    return not args.headless and not args.json and sys.stdout.isatty()


async def run_dashboard(
    config: JobConfig,
    demo_sites: int | None = None,
    metrics: MetricsAddress | None = None,
    interval: float = 5.0,
) -> int:
    """Run the job under the dashboard; quitting there stops the job.

    `metrics` is where `--metrics` serves, renewed every `interval` seconds.
    """
    # Textual is loaded here only, so headless runs never import it.
    from engine.api import Engine
    from tui.app import CrawldeckApp

    problem = _input_problem(config, demo_sites) or await _store_problem(config)
    if problem is not None:
        print(f"crawldeck: {problem}", file=sys.stderr)
        return 2
    if config.crawl is not None:
        # Extraction workers must be forkable before the app takes over stderr.
        from engine.api import start_worker_server

        try:
            start_worker_server()
        except (OSError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            print(
                "crawldeck: page extraction workers could not start "
                f"({type(exc).__name__}: {first})",
                file=sys.stderr,
            )
            return 2
    async with (
        metrics_endpoint(metrics) as endpoint,  # first: a taken port ends it before anything starts
        _job_services(config, demo_sites) as (config, secrets, urls),
        _membership(config) as cluster,
    ):
        engine = Engine(config, secrets, base_urls=urls, cluster=cluster)
        # In a cluster the dashboard's controls steer every worker; quitting stops this one.
        job = engine if cluster is None else cluster.steered(engine)
        async with metrics_published(endpoint, engine.snapshot, interval):
            state = await CrawldeckApp(job).run_async()
        if engine.failure_reason:
            print(f"crawldeck: {engine.failure_reason}", file=sys.stderr)
        _print_summary(engine, config)
        return job_exit_status(state, engine.snapshot().counts)


def simulate(job: Path, port: int, overrides: Sequence[str] = ()) -> int:
    from engine.api import run_simulator

    config = load_config(job, overrides=overrides)
    limits = [k for p in config.providers for k in p.keys]
    rpm = min((k.rpm for k in limits if k.rpm), default=None)
    tpm = min((k.tpm for k in limits if k.tpm), default=None)
    argv = [
        *simulator_arguments(config.simulator, port=port),
        "--default-limits",
        f"{rpm or '-'}:{tpm or '-'}",
    ]
    return run_simulator(argv)


async def baseline_command(action: str, source: Path, baseline_id: int | None) -> int:
    """`crawldeck baseline show|save|clear`: which baseline the job's drift gates judge by.

    Every run keeps the baseline it learned; `save` makes one of them (the
    newest by default) the job's, so later runs judge against it from their
    first result instead of learning their own.
    """
    from datetime import datetime

    from engine.api import Baseline, BaselineFormatError, Store

    db = Path(load_config(source).job.store) if source.suffix == ".toml" else source
    if not db.exists():
        print(f"crawldeck: no results database at {db}", file=sys.stderr)
        return 2
    store = await Store.open(db)
    try:
        kept = await store.baselines()
        if action == "save":
            chosen = await store.save_baseline(baseline_id)
            if chosen is None:
                which = f"no baseline {baseline_id}" if baseline_id else "no learned baseline yet"
                print(f"crawldeck: {db}: {which} (a run learns one from its first results)")
                return 2
            print(f"saved baseline {chosen}: later runs of this job judge drift against it")
            return 0
        if action == "clear":
            await store.clear_saved_baseline()
            print("no saved baseline: each run learns its own from its first results")
            return 0
        if not kept:
            print("no baselines yet: a run learns one from its first results")
            return 0
        for kept_id, run_id, created_at, saved, text in kept:
            when = datetime.fromtimestamp(created_at).strftime("%Y-%m-%d %H:%M")
            mark = "  [saved: runs judge against this one]" if saved else ""
            print(f"baseline {kept_id}, learned by run {run_id} at {when}{mark}")
            if saved or kept_id == kept[0][0]:
                try:
                    print("\n".join(Baseline.from_json(text).describe()))
                except BaselineFormatError as exc:
                    print(f"  unreadable: {exc}")
        return 0
    finally:
        await store.close()


def plan_job(config: JobConfig, args: argparse.Namespace) -> int:
    """`crawldeck plan`: the job's plan as tables, or one JSON object with `--json`."""
    from engine.api import PlanHints, make_plan
    from tui.plan_report import plan_json, plan_tables

    problem = _input_problem(config, None)
    if problem is not None:
        print(f"crawldeck: {problem}", file=sys.stderr)
        return 2
    hints = PlanHints(args.output_tokens, args.latency_s, args.burst_s)
    try:
        plan = asyncio.run(make_plan(config, hints))
    except (InputError, OSError, ValueError) as exc:
        print(f"crawldeck: {exc}", file=sys.stderr)
        return 2
    (plan_json if args.json else plan_tables)(plan.record(), sys.stdout)
    return 0


def export(source: Path, fmt: str, output: Path | None, failures: bool) -> int:
    from engine.api import export_results

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


entry = ending_process(main)
"""The `crawldeck` command (`main` in a process that ends with it)."""

if __name__ == "__main__":
    raise SystemExit(entry())
