"""A provider that echoes the key: no channel a user or an operator sees holds it.

A job with three keys runs through the real CLI, in subprocesses, against
`HostileProvider` on loopback, which echoes the key it was sent in every
response's headers and reason phrase, in 400, 401, 403, 429 and 500 bodies,
and in a 200 answer's content.  One key always gets 401 and one 403 (both
are disabled, the job goes on with the third), and the third meets every
other echo.  The job runs twice, once with headless status lines and once
with `--json`, each with OPENAI_LOG=debug as a user debugging it would set
(the calls no longer go through the SDK, so it adds nothing; the
transport's own debug log is checked in `test_provider_client`).  While it
runs (one answer is held back until every echo has been served),
`crawldeck status --json` reads its control socket and the store's files
are read as bytes; after it, both export formats with `--failures` and the
`events` table.

Every channel is searched for each key and for every fragment of it of
eight characters or more, and each must hold none; the keys' masked hints
must stand where the echoes were, so the test fails if the provider never
echoed.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import secrets
import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.provider.redaction import mask_secret
from tests.engine.conftest import write_records
from tests.engine.provider.hostile_provider import HostileProvider
from tests.engine.test_cli import RUN_TIMEOUT_S, command

ALIASES = ("main", "revoked", "forbidden")
STATUS_OF = {"revoked": 401, "forbidden": 403}
MARKED = (  # one chunk a marker: what the provider answers `main` for it
    "echo-in-answer",
    "echo-status-400",
    "echo-status-429",
    "echo-status-500",
    "echo-held",
)
PLAIN = 6
FRAGMENT = 8


def variable(alias: str) -> str:
    return f"CRAWLDECK_LEAK_TEST_{alias.upper()}"


def write_hostile_job(folder: Path, base_url: str) -> Path:
    folder.mkdir(parents=True)
    records = folder / "records.txt"
    write_records(records, PLAIN, words=8)
    with records.open("a", encoding="utf-8") as out:
        for marker in MARKED:
            out.write(f"a record that asks for {marker} from the provider\n")
    keys = "".join(
        f"""
[[providers.keys]]
env = "{variable(alias)}"
alias = "{alias}"
rpm = 100000
tpm = 100000000
"""
        for alias in ALIASES
    )
    job = folder / "job.toml"
    job.write_text(
        f"""\
[job]
name = "leak-test"
input = "records.txt"
input_format = "text"
store = "results.db"
chunk_tokens = 400
chunk_overlap_tokens = 0
preset = "steady"

[[providers]]
name = "hostile"
base_url = "{base_url}"
model = "gpt-4o-mini"
price_input_per_m = 0.15
price_output_per_m = 0.60
{keys}
[presets.steady]
concurrency = 4
batch_size = 1
max_retries = 1
backoff_base_s = 0.02
backoff_max_s = 0.05
request_timeout_s = 300.0  # an answer is held back while the test looks: never time out
adaptive_concurrency = false
""",
        encoding="utf-8",
    )
    return job


@dataclass
class Run:
    """What one run left in each channel, by channel name."""

    exit_code: int
    channels: dict[str, str] = field(default_factory=dict)


@dataclass
class LeakHunt:
    """The keys, what the providers served, and both runs' channels."""

    keys: dict[str, str]
    served: Counter[str]
    runs: dict[str, Run]

    def hint(self, alias: str) -> str:
        return mask_secret(self.keys[alias])


async def crawldeck(*args: str | Path, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the CLI to its end; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *command(*args),
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # the hang guard fired: leave nothing behind
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def store_bytes(folder: Path) -> dict[str, str]:
    """The store's files as they are on disk (latin-1 keeps every byte as one character)."""
    return {
        f"file {path.name}": path.read_bytes().decode("latin-1")
        for path in sorted(folder.glob("results.db*"))
        if path.is_file()
    }


def tables(db: Path) -> dict[str, str]:
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        return {
            f"table {name}": "\n".join(repr(row) for row in conn.execute(f"SELECT * FROM {name}"))
            for name in ("events", "failures", "results", "runs")
        }


async def run_against(
    provider: HostileProvider, folder: Path, keys: dict[str, str], flags: tuple[str, ...]
) -> Run:
    """One run of the job against `provider`, and everything it left anywhere."""
    job = write_hostile_job(folder, provider.base_url)
    env = {**os.environ, "OPENAI_LOG": "debug"}
    env.update({variable(alias): secret for alias, secret in keys.items()})
    found: dict[str, str] = {}
    with (folder / "stdout.txt").open("wb") as out, (folder / "stderr.txt").open("wb") as err:
        run = await asyncio.create_subprocess_exec(
            *command("run", job, "--headless", *flags, "--interval", "0.2"),
            cwd=folder,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await provider.wait_until_served("401", "403", "400", "200-echo")
            while True:  # until the job has acted on both refusals
                code, status, problem = await crawldeck(
                    "status", job, "--json", cwd=folder, env=env
                )
                assert code == 0, problem
                disabled = [k for k in json.loads(status)["keys"] if k["disabled_reason"]]
                if len(disabled) == 2:
                    break
            found["status --json stdout"] = status
            found["status --json stderr"] = problem
            found.update({f"{name} (running)": text for name, text in store_bytes(folder).items()})
            provider.release()
            exit_code = await run.wait()
    finally:
        provider.release()
        if run.returncode is None:
            run.kill()
            await run.wait()
    found["run stdout"] = (folder / "stdout.txt").read_text(encoding="utf-8")
    found["run stderr"] = (folder / "stderr.txt").read_text(encoding="utf-8")
    (code, exported, problem), (code_csv, _, problem_csv) = await asyncio.gather(
        crawldeck("export", job, "--failures", cwd=folder, env=env),
        crawldeck(
            "export",
            job,
            "--failures",
            "--format",
            "csv",
            "-o",
            "failures.csv",
            cwd=folder,
            env=env,
        ),
    )
    assert (code, code_csv) == (0, 0), problem + problem_csv
    found["export --failures jsonl"] = exported
    found["export --failures csv"] = (folder / "failures.csv").read_text(encoding="utf-8")
    found.update(store_bytes(folder))
    found.update(tables(folder / "results.db"))
    # Anything else the run left behind in its folder (the state folder too).
    for path in sorted(folder.rglob("*")):
        name = f"file {path.relative_to(folder)}"
        if path.is_file() and name not in found:
            found[name] = path.read_bytes().decode("latin-1")
    return Run(exit_code, found)


async def run_with_its_own_provider(
    folder: Path, keys: dict[str, str], flags: tuple[str, ...]
) -> tuple[Run, Counter[str]]:
    provider = HostileProvider({keys[alias]: status for alias, status in STATUS_OF.items()})
    await provider.start()
    try:
        return await run_against(provider, folder, keys, flags), provider.served
    finally:
        await provider.stop()


async def hunt(folder: Path) -> LeakHunt:
    """Both runs at once (each CLI start costs seconds here), each with its own provider."""
    keys = {alias: "sk-proj-" + secrets.token_urlsafe(30) for alias in ALIASES}
    (headless, served), (as_json, served_json) = await asyncio.gather(
        run_with_its_own_provider(folder / "headless", keys, ()),
        run_with_its_own_provider(folder / "json", keys, ("--json",)),
    )
    return LeakHunt(keys, served + served_json, {"headless": headless, "json": as_json})


@pytest.fixture(scope="module")
def leak_hunt(tmp_path_factory: pytest.TempPathFactory) -> LeakHunt:
    return asyncio.run(hunt(tmp_path_factory.mktemp("leak-hunt")))


def leaks(text: str, secret: str) -> list[str]:
    """Each fragment of `secret` (FRAGMENT characters or more) that `text` holds."""
    return [
        secret[i : i + FRAGMENT]
        for i in range(len(secret) - FRAGMENT + 1)
        if secret[i : i + FRAGMENT] in text
    ]


def test_the_provider_echoed_the_key_in_every_way_it_can(leak_hunt: LeakHunt) -> None:
    for kind in ("400", "401", "403", "429", "500", "200-echo", "200"):
        assert leak_hunt.served[kind] >= 2, (kind, leak_hunt.served)  # both runs
    assert leak_hunt.runs["headless"].exit_code == 1  # two chunks failed, the rest done
    assert leak_hunt.runs["json"].exit_code == 1
    assert "2 failed" in leak_hunt.runs["headless"].channels["run stderr"]


@pytest.mark.parametrize("mode", ["headless", "json"])
def test_no_channel_holds_a_key_or_a_fragment_of_one(leak_hunt: LeakHunt, mode: str) -> None:
    channels = leak_hunt.runs[mode].channels
    found = {
        (name, alias): leaks(text, secret)
        for name, text in channels.items()
        for alias, secret in leak_hunt.keys.items()
    }

    assert {where: fragments for where, fragments in found.items() if fragments} == {}
    # What was searched: the channels the brief names, each with something in it.
    for name in (
        "run stdout",
        "run stderr",
        "status --json stdout",
        "export --failures jsonl",
        "export --failures csv",
        "file results.db",
        "file results.db-wal (running)",
        "table events",
        "table failures",
    ):
        assert channels.get(name), f"{name} was not captured"


@pytest.mark.parametrize("mode", ["headless", "json"])
def test_the_store_and_exports_show_the_hint_where_the_key_was_echoed(
    leak_hunt: LeakHunt, mode: str
) -> None:
    main, revoked, forbidden = (leak_hunt.hint(alias) for alias in ALIASES)
    channels = leak_hunt.runs[mode].channels
    exported = [json.loads(line) for line in channels["export --failures jsonl"].splitlines()]
    reasons = [row["reason"] for row in exported if row["status"] == "failed"]
    echoed = [row["result"]["summary"] for row in exported if row["status"] == "ok"]
    as_csv = list(csv.DictReader(io.StringIO(channels["export --failures csv"])))

    assert len(reasons) == 2 and all(main in reason for reason in reasons), reasons
    assert f"the key is {main}, it begins {main}" in echoed
    assert sorted(r["reason"] for r in as_csv if r["status"] == "failed") == sorted(reasons)
    assert any(main in r["result"] for r in as_csv if r["status"] == "ok")
    assert revoked in channels["table events"] and forbidden in channels["table events"]
    assert main in channels["table events"]  # the retried 500 and the failures


def test_headless_lines_and_status_show_the_hint(leak_hunt: LeakHunt) -> None:
    main, revoked, forbidden = (leak_hunt.hint(alias) for alias in ALIASES)
    channels = leak_hunt.runs["headless"].channels
    lines = channels["run stdout"].splitlines()
    disabled = [line for line in lines if "key_disabled" in line]
    failed = [line for line in lines if "chunk_failed" in line]
    status = json.loads(channels["status --json stdout"])
    reasons = {key["alias"]: key["disabled_reason"] for key in status["keys"]}

    assert any(revoked in line for line in disabled) and any(forbidden in line for line in disabled)
    assert failed and all(main in line for line in failed)
    assert revoked in reasons["revoked"] and forbidden in reasons["forbidden"]
    assert reasons["main"] == ""


def test_json_lines_show_the_hint_in_events_and_in_each_keys_disabled_reason(
    leak_hunt: LeakHunt,
) -> None:
    main, revoked, forbidden = (leak_hunt.hint(alias) for alias in ALIASES)
    records = [
        json.loads(line)
        for line in leak_hunt.runs["json"].channels["run stdout"].splitlines()
        if line.startswith("{")
    ]
    events = [r for r in records if r["type"] == "event"]
    last = [r for r in records if r["type"] == "status"][-1]
    reasons = {key["alias"]: key["disabled_reason"] for key in last["keys"]}

    disabled = [e["message"] for e in events if e["kind"] == "key_disabled"]
    assert any(revoked in m for m in disabled) and any(forbidden in m for m in disabled)
    assert any(main in e["message"] for e in events if e["kind"] == "chunk_failed")
    assert revoked in reasons["revoked"] and forbidden in reasons["forbidden"]


def test_a_key_a_header_cannot_carry_is_refused_at_start_by_its_variable_alone(
    tmp_path: Path,
) -> None:
    # A key pasted with a stray character would otherwise fail in the transport,
    # in a traceback that quotes part of it.
    job = write_hostile_job(tmp_path / "job", "http://127.0.0.1:9/v1")  # never called
    keys = {alias: "sk-proj-" + secrets.token_urlsafe(30) for alias in ALIASES}
    keys["revoked"] = keys["revoked"][:20] + "é" + keys["revoked"][20:]
    env = {**os.environ, **{variable(alias): secret for alias, secret in keys.items()}}

    code, out, err = asyncio.run(crawldeck("run", job, "--headless", cwd=job.parent, env=env))

    assert code == 2
    assert out == ""
    lines = job.read_text(encoding="utf-8").splitlines()
    line = lines.index(f'env = "{variable("revoked")}"') + 1
    assert err.strip().splitlines() == [
        f"{job}:{line}: providers[0].keys[1].env: environment variable {variable('revoked')} holds "
        "a space, a control or a non-ASCII character (an API key has none)"
    ]
    assert all(leaks(out + err, secret) == [] for secret in keys.values())
