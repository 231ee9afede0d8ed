"""The engine's public surface: all that the command line and the dashboard use.

Start a job (`Engine`), read and check job and preset files, resolve key
secrets, steer a job (`JobControls`, the control server and client), watch
it (`Snapshot`, `Event`, the headless reporter, exit status and the
Prometheus metrics endpoint), and the
tools around a job: export, drift baselines, the bundled simulator and
synthetic site server, the crawl's extraction workers, setting a store
aside.  Everything else in `engine/` is the engine's own business and may
change shape without the front ends noticing (a test holds `tui/` to this
module).

Importing it stays cheap: `crawldeck --help`, `--version` and `status`
import it, and must not pay for openai, numpy, river, aiosqlite, aiohttp or
trafilatura.  What needs those (the engine itself, the store, export,
baselines, the simulator, extraction) is loaded on first use, through the
module's `__getattr__`; type checkers see it through the `TYPE_CHECKING`
imports.
"""

from __future__ import annotations

import importlib
from importlib import resources
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any

from engine.cluster.cluster_view import ClusterView, WorkerView
from engine.config.config_problem import ConfigError, ConfigProblem
from engine.config.job_file import load_config
from engine.config.key_secrets import resolve_secrets, served_by_simulator
from engine.config.presets import load_preset_file, preset_from_text_fields, save_preset
from engine.config.setting_bounds import CONCURRENCY, FETCH_CONCURRENCY, Bound
from engine.config.settings import CrawlSettings, JobConfig, Preset
from engine.config.table_check import TableChecker, WrongType
from engine.config.toml_source import read_toml
from engine.control.client import ControlClient, ControlError, NoJobRunning
from engine.control.controls import Adjustment, JobControls, RunnableJob
from engine.control.server import (
    ControlServer,
    ControlServerError,
    socket_path_for_store,
    store_for_socket,
)
from engine.limits.memory_floor import process_floor_bytes
from engine.observe.batch_view import BatchRoute as BatchRouteView
from engine.observe.batch_view import SubmittedBatch
from engine.observe.events import Event, EventKind
from engine.observe.exit_status import job_exit_status
from engine.observe.headless_reporter import (
    HeadlessReporter,
    eta_text,
    format_duration,
    snapshot_record,
    status_line,
)
from engine.observe.metrics_address import (
    MetricsAddress,
    MetricsBindError,
    parse_metrics_address,
)
from engine.observe.snapshot import (
    BudgetSnapshot,
    Counts,
    CrawlSnapshot,
    DriftMetric,
    DriftState,
    JobState,
    KeySnapshot,
    MemorySnapshot,
    QueueDepths,
    Snapshot,
)
from engine.pipeline.inputs import InputError, input_present, iter_documents
from engine.simulation.simulator_launch import launched_simulator, simulator_arguments
from engine.store.state_folder import state_folder_for_store
from engine.store.store_aside import StoreInUseError, set_store_aside
from engine.store.store_error import StoreError

if TYPE_CHECKING:
    from engine.cluster.cluster_job import ClusterJob, joined_cluster
    from engine.cluster.redis_connection import RedisUnavailable
    from engine.crawl.extraction import start_worker_server
    from engine.drift.baseline import Baseline, BaselineFormatError
    from engine.engine import Engine
    from engine.observe.metrics_endpoint import MetricsEndpoint, serving_metrics
    from engine.planning.job_plan import JobPlan, PlanHints, make_plan
    from engine.simulation.simulator import main as run_simulator
    from engine.simulation.site_launch import launched_site_server
    from engine.store.export import export_results
    from engine.store.sqlite_store import Store

# Public name -> (module, name there), imported on first use: each of these
# modules pulls in a heavy library.
_LAZY: dict[str, tuple[str, str]] = {
    "Engine": ("engine.engine", "Engine"),
    "Store": ("engine.store.sqlite_store", "Store"),
    "export_results": ("engine.store.export", "export_results"),
    "Baseline": ("engine.drift.baseline", "Baseline"),
    "BaselineFormatError": ("engine.drift.baseline", "BaselineFormatError"),
    "run_simulator": ("engine.simulation.simulator", "main"),
    "launched_site_server": ("engine.simulation.site_launch", "launched_site_server"),
    "start_worker_server": ("engine.crawl.extraction", "start_worker_server"),
    "ClusterJob": ("engine.cluster.cluster_job", "ClusterJob"),
    "joined_cluster": ("engine.cluster.cluster_job", "joined_cluster"),
    "RedisUnavailable": ("engine.cluster.redis_connection", "RedisUnavailable"),
    "MetricsEndpoint": ("engine.observe.metrics_endpoint", "MetricsEndpoint"),
    "serving_metrics": ("engine.observe.metrics_endpoint", "serving_metrics"),
    "JobPlan": ("engine.planning.job_plan", "JobPlan"),
    "PlanHints": ("engine.planning.job_plan", "PlanHints"),
    "make_plan": ("engine.planning.job_plan", "make_plan"),
}


def engine_memory_floor_bytes() -> int:
    """This process's memory floor with the engine loaded, as every run carries it:
    what a job file's memory limits are checked against before anything starts."""
    import engine.engine  # noqa: F401  (loaded first: the floor includes it)

    return process_floor_bytes()


def demo_job_file() -> Traversable:
    """The bundled demo's job file (its sample transcripts sit beside it)."""
    return resources.files("engine.sample").joinpath("demo.toml")


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CONCURRENCY",
    "FETCH_CONCURRENCY",
    "Adjustment",
    "Baseline",
    "BaselineFormatError",
    "BatchRouteView",
    "Bound",
    "BudgetSnapshot",
    "ClusterJob",
    "ClusterView",
    "ConfigError",
    "ConfigProblem",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "ControlServerError",
    "Counts",
    "CrawlSettings",
    "CrawlSnapshot",
    "DriftMetric",
    "DriftState",
    "Engine",
    "Event",
    "EventKind",
    "HeadlessReporter",
    "InputError",
    "JobConfig",
    "JobControls",
    "JobPlan",
    "JobState",
    "KeySnapshot",
    "MemorySnapshot",
    "MetricsAddress",
    "MetricsBindError",
    "MetricsEndpoint",
    "NoJobRunning",
    "PlanHints",
    "Preset",
    "QueueDepths",
    "RedisUnavailable",
    "RunnableJob",
    "Snapshot",
    "Store",
    "StoreError",
    "StoreInUseError",
    "SubmittedBatch",
    "TableChecker",
    "WorkerView",
    "WrongType",
    "demo_job_file",
    "engine_memory_floor_bytes",
    "eta_text",
    "export_results",
    "format_duration",
    "input_present",
    "iter_documents",
    "job_exit_status",
    "joined_cluster",
    "launched_simulator",
    "launched_site_server",
    "load_config",
    "load_preset_file",
    "make_plan",
    "parse_metrics_address",
    "preset_from_text_fields",
    "process_floor_bytes",
    "read_toml",
    "resolve_secrets",
    "run_simulator",
    "save_preset",
    "served_by_simulator",
    "serving_metrics",
    "set_store_aside",
    "simulator_arguments",
    "snapshot_record",
    "socket_path_for_store",
    "start_worker_server",
    "state_folder_for_store",
    "status_line",
    "store_for_socket",
]
