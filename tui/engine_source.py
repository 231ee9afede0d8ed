"""What the dashboard needs from an engine: a snapshot and the controls.

`engine.engine.Engine` satisfies it; tests pass a fake that returns a fixed
snapshot, so screenshots do not depend on timing.
"""

from __future__ import annotations

from typing import Protocol

from engine.snapshot import Snapshot


class EngineSource(Protocol):
    def snapshot(self) -> Snapshot: ...

    def set_concurrency(self, value: int) -> None: ...

    def apply_preset(self, preset: str) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def drain(self) -> None: ...

    def stop(self) -> None: ...
