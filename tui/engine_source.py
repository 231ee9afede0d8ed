"""What the dashboard needs from an engine: a snapshot and the controls.

`engine.engine.Engine` satisfies it; tests pass a fake that returns a fixed
snapshot, so screenshots do not depend on timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from engine.config.settings import Preset
from engine.observe.snapshot import Snapshot


class EngineSource(Protocol):
    def snapshot(self) -> Snapshot: ...

    def set_concurrency(self, value: int) -> None: ...

    def set_fetch_concurrency(self, value: int) -> None:
        """A crawl job's fetches in flight; `ValueError` for a job that does not crawl."""
        ...

    def apply_preset(self, preset: str | Preset) -> None:
        """A preset by the job's name for it, or a whole (checked) preset value."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def drain(self) -> None: ...

    def stop(self) -> None: ...


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
