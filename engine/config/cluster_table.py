"""The `[cluster]` table: which Redis a job's workers share, and how they judge each other.

Every process started with the same job file joins the same job through the
Redis the table names.  The password never sits in the file: `password_env`
names the environment variable that holds it, and a URL that carries one is
refused without being repeated:

    job.toml:31: cluster.redis: must not carry a password: put it in an environment
    variable and name that variable with password_env

Why these bounds:

- `heartbeat_s` 0.1–60: a worker is judged lost after `MISSED_HEARTBEATS`
  missed beats, so the bound is also how soon a dead worker shows (0.3 s to
  3 min).  Faster than 0.1 s is Redis traffic for nothing; slower than a
  minute leaves a dead worker's state on the dashboard for minutes.
- `visibility_timeout_s` 1–3600: how long a batch read by a worker stays
  its own before another may claim it.  Below a second a slow answer would
  be claimed while still coming; past an hour a dead worker's batches wait
  longer than any request (`request_timeout_s` is at most minutes).
- `max_deliveries` 1–100: a batch delivered this many times goes to the
  dead letters with the reason.  A hundred crashes on one batch is a batch
  that kills workers, not bad luck.
- `outage_limit_s` 1–3600: how long a Redis that went away is waited for
  (a restart takes seconds) before the job ends with an error; never
  forever, so every job ends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from engine.config.config_problem import KeyPath, format_key
from engine.config.table_check import Finding, TableChecker, refuse, unknown_key_message

__all__ = [
    "MISSED_HEARTBEATS",
    "ClusterSettings",
    "cluster_findings",
    "default_prefix",
    "read_cluster_table",
    "redis_url_problem",
]

MISSED_HEARTBEATS = 3
"""A worker whose last heartbeat is older than this many of its intervals is lost."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEMES = ("redis", "rediss", "unix")
_PASSWORD_IN_URL = (
    "must not carry a password: put it in an environment variable "
    "and name that variable with password_env"
)
# Names people reach for when they paste the password into the table.
_SECRET_NAMES = frozenset({"password", "pass", "secret", "auth", "requirepass", "token"})


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """A job shared by many worker processes through one Redis (the `[cluster]` table).

    `redis` is `redis://HOST:PORT/DB`, `rediss://…` (TLS) or
    `unix:///path/redis.sock?db=N`, without a password; `password_env`
    names the environment variable with it ("": none).  Every key the job
    keeps in Redis starts with `prefix` (the job file's reader fills in
    `crawldeck:<job name>` when it is left out).
    """

    redis: str = ""
    password_env: str = ""
    prefix: str = ""
    visibility_timeout_s: float = 120.0
    max_deliveries: int = 5
    heartbeat_s: float = 2.0
    outage_limit_s: float = 60.0

    def __post_init__(self) -> None:
        refuse("cluster", cluster_findings(self))

    @property
    def lost_after_s(self) -> float:
        """How long a worker may go without a heartbeat before it counts as lost."""
        return self.heartbeat_s * MISSED_HEARTBEATS


def cluster_findings(cluster: ClusterSettings) -> list[Finding]:
    """What is wrong with the table's values (a missing `redis` is the job file's to say).

    Neither the URL nor `password_env` is ever quoted back: either may hold
    the password by mistake.
    """
    findings: list[Finding] = []
    if cluster.redis:
        problem = redis_url_problem(cluster.redis)
        if problem:
            findings.append(("redis", problem))
    if cluster.password_env and not _ENV_NAME.fullmatch(cluster.password_env):
        findings.append(
            (
                "password_env",
                "must name an environment variable (like REDIS_PASSWORD), not hold the password",
            )
        )
    ranges: tuple[tuple[str, float, float], ...] = (
        ("visibility_timeout_s", 1, 3600),
        ("max_deliveries", 1, 100),
        ("heartbeat_s", 0.1, 60),
        ("outage_limit_s", 1, 3600),
    )
    for name, low, high in ranges:
        value = getattr(cluster, name)
        if not low <= value <= high:
            findings.append((name, f"must be from {low:g} to {high:g} (got {value!r})"))
    if cluster.prefix != cluster.prefix.strip() or any(c.isspace() for c in cluster.prefix):
        findings.append(("prefix", "must not contain spaces"))
    return findings


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL for a job file, in one line (None: nothing).

    Never quotes the URL: a password may be in it.
    """
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
    except ValueError:
        return "is not a URL like redis://HOST:PORT/DB"
    if parts.scheme not in _SCHEMES:
        return "must start with redis://, rediss:// or unix:// (like redis://127.0.0.1:6379/0)"
    if parts.password is not None or any(name.lower() == "password" for name in query):
        return _PASSWORD_IN_URL
    if parts.scheme == "unix":
        if not parts.path.strip("/"):
            return "must name the socket's path, like unix:///run/redis/redis.sock?db=0"
        return None
    if not parts.hostname:
        return "must name a host, like redis://127.0.0.1:6379/0"
    try:
        parts.port  # noqa: B018 -- reading it is the check: urllib raises on a bad port
    except ValueError:
        return "must have a port from 0 to 65535, like redis://127.0.0.1:6379/0"
    if parts.path not in ("", "/") and not re.fullmatch(r"/\d+", parts.path):
        return "must end with a database number, like redis://127.0.0.1:6379/0"
    return None


def default_prefix(job_name: str) -> str:
    """The key prefix of a job that names none: one per job name, so jobs don't mix."""
    name = re.sub(r"\s+", "_", job_name.strip())
    return f"crawldeck:{name or 'job'}"


def read_cluster_table(
    checker: TableChecker, raw: Mapping[str, Any], path: KeyPath, job_name: str
) -> ClusterSettings:
    """The table at `path` as settings; its problems go to `checker`.

    `redis` is required; a left-out `prefix` becomes `default_prefix(job_name)`.
    """
    cluster, _ = checker.settings(
        ClusterSettings(), raw, path, unknown_message=_cluster_unknown_message
    )
    if not cluster.redis.strip() and not _reported(checker, path, "redis"):
        checker.add(
            (*path, "redis"),
            'is required: the Redis the workers share, like "redis://127.0.0.1:6379/0"',
        )
    if not cluster.prefix:
        cluster = replace(cluster, prefix=default_prefix(job_name))
    return cluster


def _reported(checker: TableChecker, path: KeyPath, key: str) -> bool:
    # A `redis` refused (or a table that is not one) was reported already: one line is enough.
    table = format_key(path)
    return any(problem.key in (table, f"{table}.{key}") for problem in checker.problems)


def _cluster_unknown_message(key: str, known: Sequence[str]) -> str:
    if key.lower() in _SECRET_NAMES:
        return (
            "secrets don't belong in the file: put the password in an environment "
            'variable and name it with password_env = "..."'
        )
    return unknown_key_message(key, known)
