"""A reader that went away: `crawldeck export … | head -1` ends quietly.

When the program reading our stdout exits first, the next write fails with
EPIPE.  POSIX tools die of SIGPIPE there, silently, and the shell reports
status 141 (128 + SIGPIPE); Python ignores SIGPIPE and raises
`BrokenPipeError` instead, which would end in a traceback (and, at exit, in
a second one when the interpreter flushes stdout).  Here the error becomes
that same silent 141, and stdout is pointed at /dev/null so nothing later
writes into the closed pipe again.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE


class Main(Protocol):
    """A command line's entry point: the arguments (None: `sys.argv`) in, an exit code out."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def silence_stdout() -> None:
    """Send whatever is still to be written to stdout to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def quiet_when_stdout_closes(main: Main) -> Main:
    """Wrap a command-line `main`: a closed stdout exits 141, without a traceback."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            try:
                return main(argv)
            finally:
                # What is still buffered meets the closed pipe here, where it
                # can be caught, not during the interpreter's shutdown.
                sys.stdout.flush()
        except BrokenPipeError:
            silence_stdout()
            return EXIT_CLOSED_PIPE

    return wrapper


class ClosedStdout:
    """A `with` block in which a closed stdout is noted and silenced, not raised.

    For a job whose status lines nobody reads any more: the job ends on its
    own terms (it drains) instead of dying mid-request.
    """

    def __init__(self) -> None:
        self.closed = False

    def __enter__(self) -> ClosedStdout:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc_type is not None and issubclass(exc_type, BrokenPipeError):
            if not self.closed:
                self.closed = True
                silence_stdout()
            return True
        return False
