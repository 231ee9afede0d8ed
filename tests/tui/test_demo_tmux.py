"""`crawldeck demo` in a real terminal: tmux draws it, keys steer it, `q` then `y` ends it.

The installed console script runs inside a detached tmux session of its own
(a private tmux server), with HOME and the config folders in tmp_path and the
demo's store in tmp_path (its working directory).  The screen is read with
`tmux capture-pane`, the only way to read a terminal, until what is looked for
appears or a generous deadline passes.  Assertions look for words and numbers,
not layout, so the dashboard can grow without breaking this test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.engine.test_cli import MARKER_ENV, processes_with_marker

WAIT_S = 30.0  # a hang guard only; the screen normally changes within a second
STEP_S = 0.1
SESSION = "demo"
SIM_KEY_ENVS = ("CRAWLDECK_SIM_KEY_1", "CRAWLDECK_SIM_KEY_2")  # the demo's, left unset
# Slow enough to outlast the test (about 5 chunks/s of 625), and a concurrency
# that only the keys change: the demo's adaptive concurrency would move it too.
DEMO_FLAGS = (
    "--set",
    "preset.concurrency=2",
    "--set",
    "preset.adaptive_concurrency=false",
    "--set",
    "simulator.latency_s=[3.0, 5.0]",
)
CONCURRENCY = re.compile(r"concurrency\s+\d+/(\d+)")


class TmuxTerminal:
    """One detached tmux session on a private server, read and typed into from outside."""

    def __init__(self, tmux: str, env: dict[str, str]) -> None:
        self.tmux = tmux
        self.socket_name = f"crawldeck-test-{uuid.uuid4().hex[:12]}"
        self.env = env

    async def run(self, *args: str, check: bool = True) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            self.tmux,
            "-L",
            self.socket_name,
            "-f",
            os.devnull,  # the user's tmux.conf stays out
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=WAIT_S)
        text = out.decode(errors="replace")
        assert not check or proc.returncode == 0, f"tmux {' '.join(args)}: {text}"
        assert proc.returncode is not None
        return proc.returncode, text

    async def start(self, shell_command: str, cwd: Path) -> None:
        await self.run(
            "new-session", "-d", "-x", "160", "-y", "48", "-s", SESSION, "-c", str(cwd),
            shell_command,
        )  # fmt: skip

    async def screen(self) -> str:
        return (await self.run("capture-pane", "-p", "-t", SESSION))[1]

    async def press(self, key: str) -> None:
        """One key: a tmux key name such as `Space`, or a literal character."""
        literal = () if len(key) > 1 else ("-l",)
        await self.run("send-keys", "-t", SESSION, *literal, key)

    async def until_screen(self, condition: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while not condition(screen := await self.screen()):
            assert time.monotonic() < deadline, f"the screen never showed {what}:\n{screen}"
            await asyncio.sleep(STEP_S)
        return screen

    async def until_shown(self, *words: str) -> str:
        return await self.until_screen(lambda s: all(w in s for w in words), " and ".join(words))

    async def session_alive(self) -> bool:
        return (await self.run("has-session", "-t", SESSION, check=False))[0] == 0

    async def kill_server(self) -> None:
        await self.run("kill-server", check=False)


def installed_tmux() -> str:
    """tmux's path.  Without it the test fails, never skips: `.ci/run` installs it."""
    found = shutil.which("tmux")
    if found is None:
        pytest.fail("tmux is not installed: install it (`.ci/run` does: apt-get install tmux)")
    return found


@contextlib.asynccontextmanager
async def private_tmux(tmp_path: Path, marker: str) -> AsyncIterator[TmuxTerminal]:
    """A private tmux server that keeps its socket and the demo's files in tmp_path.

    `marker` is put in the environment, so every process started in it can be found.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", *SIM_KEY_ENVS)}
    env.update(
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
        CRAWLDECK_CONFIG_DIR=str(tmp_path / "config"),
        TERM="xterm-256color",
        SHELL="/bin/sh",  # tmux runs the session's command with it
        TMUX_TMPDIR=str(tmp_path),  # the server's socket too: nothing is left in /tmp
    )
    env[MARKER_ENV] = marker
    terminal = TmuxTerminal(installed_tmux(), env)
    try:
        yield terminal
    finally:
        await terminal.kill_server()


def concurrency_on(screen: str) -> int | None:
    found = CONCURRENCY.search(screen)
    return int(found.group(1)) if found else None


async def until_no_process_has(marker: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while leftovers := processes_with_marker(marker):
        assert time.monotonic() < deadline, [p.cmdline() for p in leftovers]
        await asyncio.sleep(STEP_S)


async def test_the_demo_draws_the_dashboard_obeys_its_keys_and_quits_after_asking(
    tmp_path: Path,
) -> None:
    crawldeck = Path(sys.executable).with_name("crawldeck")
    exit_file = tmp_path / "exit-code"
    marker = uuid.uuid4().hex  # inherited by the demo and its simulator
    async with private_tmux(tmp_path, marker) as terminal:
        demo = shlex.join([str(crawldeck), "demo", *DEMO_FLAGS])
        await terminal.start(f"{demo}; echo $? > {shlex.quote(str(exit_file))}", cwd=tmp_path)

        # The footer fits its keys to the width after the first layout, so it
        # may come a frame after the figures.
        screen = await terminal.until_shown("transcripts-demo", "RUNNING", "Pause", "Quit")
        assert "sim-main" in screen and "sim-spare" in screen  # the key table
        assert "conservative" not in screen

        await terminal.press("Space")
        await terminal.until_shown("PAUSED")
        await terminal.press("Space")
        screen = await terminal.until_screen(
            lambda s: "RUNNING" in s and "PAUSED" not in s, "RUNNING"
        )

        before = concurrency_on(screen)
        assert before is not None, screen
        await terminal.press("+")
        await terminal.until_screen(
            lambda s: concurrency_on(s) == before + 1, f"concurrency {before + 1}"
        )

        await terminal.press("t")
        await terminal.until_shown("conservative")

        await terminal.press("q")
        await terminal.until_shown("Stop and quit")
        assert await terminal.session_alive()  # it asked instead of quitting
        await terminal.press("y")

        deadline = time.monotonic() + WAIT_S
        while await terminal.session_alive():
            assert time.monotonic() < deadline, await terminal.screen()
            await asyncio.sleep(STEP_S)
        assert exit_file.read_text().strip() == "1"  # stopped before every chunk was done
        assert (tmp_path / "crawldeck-demo.db").is_file()  # the demo's store, where it ran
        await until_no_process_has(marker)  # no demo, simulator or tmux server is left


async def test_the_crawl_demo_crawls_under_the_dashboard_and_fetch_keys_steer_it(
    tmp_path: Path,
) -> None:
    crawldeck = Path(sys.executable).with_name("crawldeck")
    exit_file = tmp_path / "exit-code"
    marker = uuid.uuid4().hex  # inherited by the demo, its simulator and its site server
    async with private_tmux(tmp_path, marker) as terminal:
        demo = shlex.join([str(crawldeck), "demo", "--crawl", "--sites", "90", *DEMO_FLAGS])
        await terminal.start(f"{demo}; echo $? > {shlex.quote(str(exit_file))}", cwd=tmp_path)

        # Pages arrive: extraction workers started although the app owns the terminal.
        screen = await terminal.until_screen(
            lambda s: re.search(r"pages\s+fetched [1-9]", s) is not None, "fetched pages"
        )
        assert "sites-demo" in screen and "crawl sites" in screen
        assert "cannot read crawl targets" not in screen
        assert "fetch 0/64" in screen or re.search(r"fetch \d+/64", screen), screen

        await terminal.press("]")
        await terminal.until_screen(lambda s: re.search(r"fetch \d+/72", s) is not None, "/72")

        await terminal.press("q")
        await terminal.until_shown("Stop and quit")
        await terminal.press("y")
        deadline = time.monotonic() + WAIT_S
        while await terminal.session_alive():
            assert time.monotonic() < deadline, await terminal.screen()
            await asyncio.sleep(STEP_S)
        assert (tmp_path / "crawldeck-crawl-demo.db").is_file()
        await until_no_process_has(marker)  # no demo, simulator, site server or worker left
