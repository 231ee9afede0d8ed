"""`crawldeck --version`: the version the package was installed as.

Read from the installed package's metadata when the flag is given, so it is
never a copy that drifts from `pyproject.toml`, and costs nothing otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

DISTRIBUTION = "crawldeck"


def installed_version() -> str:
    """The installed distribution's version, or a clear stand-in when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "(not installed: no package metadata)"


class VersionFlag(argparse.Action):
    """Prints `crawldeck <version>` and exits 0, like argparse's own `version` action."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the installed version and exit")
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog} {installed_version()}")  # stdout, as argparse's own does
        parser.exit()
