"""Where the job the dashboard watches keeps its results.

The dashboard watches anything with the engine's `JobControls` (the engine,
a job in another process, a test's fixed snapshot); the results browser also
needs the job's SQLite store, which only some of them know.
"""

from __future__ import annotations

from pathlib import Path


def store_path_of(source: object) -> Path | None:
    """The job's SQLite store, if the source knows it (optional: a fake need not).

    A source may offer a `store_path` attribute; an `Engine` has its job's
    configured store.
    """
    path = getattr(source, "store_path", None)
    if path is None:
        config = getattr(source, "config", None)
        path = getattr(getattr(config, "job", None), "store", None)
    return Path(path) if isinstance(path, str | Path) and str(path) else None
