"""The `[cluster]` table: which Redis a job's workers share, read and checked at its lines.

Without the table nothing changes.  Every problem names the file, the line
and the key; a password typed where it does not belong is refused and never
repeated.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.cluster_table import MISSED_HEARTBEATS, ClusterSettings
from engine.config.config_problem import ConfigError
from engine.config.job_file import FLAG_SOURCE, load_config
from engine.config.settings import effective_settings
from tests.engine.config.test_config_file import MINIMAL, REPO, line_of, problems_of, write

SECRET = "hunter2-s3cr3t"


def with_cluster(tmp_path: Path, lines: str, job_name: str | None = None) -> Path:
    text = (
        MINIMAL if job_name is None else MINIMAL.replace("[job]\n", f'[job]\nname = "{job_name}"\n')
    )
    return write(tmp_path, text + f"\n[cluster]\n{lines}\n")


def test_without_the_table_the_job_is_not_clustered(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).cluster is None


def test_a_table_with_only_redis_gets_the_defaults_and_a_prefix_from_the_job_name(
    tmp_path: Path,
) -> None:
    path = with_cluster(tmp_path, 'redis = "redis://10.0.0.5:6380/2"', job_name="night run")

    cluster = load_config(path).cluster

    assert cluster == ClusterSettings(redis="redis://10.0.0.5:6380/2", prefix="crawldeck:night_run")
    assert cluster.lost_after_s == cluster.heartbeat_s * MISSED_HEARTBEATS


def test_every_key_is_read(tmp_path: Path) -> None:
    path = with_cluster(
        tmp_path,
        """\
redis = "rediss://redis.internal:6379/0"
password_env = "CRAWLDECK_REDIS_PASSWORD"
prefix = "jobs:nightly"
visibility_timeout_s = 30
max_deliveries = 3
heartbeat_s = 0.5
outage_limit_s = 20
""",
    )

    assert load_config(path).cluster == ClusterSettings(
        redis="rediss://redis.internal:6379/0",
        password_env="CRAWLDECK_REDIS_PASSWORD",
        prefix="jobs:nightly",
        visibility_timeout_s=30.0,
        max_deliveries=3,
        heartbeat_s=0.5,
        outage_limit_s=20.0,
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "redis://worker@redis.internal:6379/1",  # an ACL user name; its password from the env
        "rediss://redis.internal:6380/0",
        "unix:///run/redis/redis.sock?db=3",
    ],
)
def test_redis_takes_tcp_tls_and_unix_socket_urls(tmp_path: Path, url: str) -> None:
    cluster = load_config(with_cluster(tmp_path, f'redis = "{url}"')).cluster

    assert cluster is not None
    assert cluster.redis == url


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ('prefix = "x"', "redis", "is required: the Redis the workers share"),
        ('redis = ""', "redis", "is required"),
        ('redis = "http://127.0.0.1:6379/0"', "redis", "must start with redis://, rediss://"),
        ('redis = "redis:///0"', "redis", "must name a host"),
        ('redis = "redis://127.0.0.1:99999/0"', "redis", "must have a port from 0 to 65535"),
        ('redis = "redis://127.0.0.1:6379/zero"', "redis", "must end with a database number"),
        ('redis = "unix://"', "redis", "must name the socket's path"),
        ("redis = 6379", "redis", "expected a string, got an integer"),
        ('redis = "redis://h/0"\npassword_env = 7', "password_env", "expected a string"),
        ('redis = "redis://h/0"\nprefix = "my job"', "prefix", "must not contain spaces"),
        (
            'redis = "redis://h/0"\nvisibility_timeout_s = 0',
            "visibility_timeout_s",
            "from 1 to 3600",
        ),
        (
            'redis = "redis://h/0"\nvisibility_timeout_s = 3601',
            "visibility_timeout_s",
            "must be from 1 to 3600 (got 3601.0)",
        ),
        ('redis = "redis://h/0"\nmax_deliveries = 0', "max_deliveries", "from 1 to 100 (got 0)"),
        ('redis = "redis://h/0"\nmax_deliveries = 101', "max_deliveries", "from 1 to 100"),
        ('redis = "redis://h/0"\nmax_deliveries = 2.5', "max_deliveries", "expected an integer"),
        ('redis = "redis://h/0"\nheartbeat_s = 0.05', "heartbeat_s", "from 0.1 to 60 (got 0.05)"),
        ('redis = "redis://h/0"\nheartbeat_s = 61', "heartbeat_s", "from 0.1 to 60"),
        ('redis = "redis://h/0"\nheartbeat_s = "2"', "heartbeat_s", "expected a number"),
        ('redis = "redis://h/0"\noutage_limit_s = 0', "outage_limit_s", "from 1 to 3600"),
        (
            'redis = "redis://h/0"\nvisiblity_timeout_s = 5',
            "visiblity_timeout_s",
            "unknown key (did you mean 'visibility_timeout_s'?)",
        ),
    ],
)
def test_each_problem_names_the_file_line_and_key(
    tmp_path: Path, lines: str, key: str, message: str
) -> None:
    path = with_cluster(tmp_path, lines)

    (problem,) = problems_of(path)

    assert problem.file == str(path)
    assert problem.key == f"cluster.{key}"
    assert message in problem.message
    written = f"{key} =" if f"{key} =" in lines else "[cluster]"  # a missing key: its table
    assert problem.line == line_of(path, written)
    assert str(problem).count("\n") == 0


def test_a_table_that_is_not_a_table_is_one_problem(tmp_path: Path) -> None:
    # At the top: below a table, TOML would read it as that table's key.
    path = write(tmp_path, 'cluster = "redis://127.0.0.1:6379/0"\n' + MINIMAL)

    (problem,) = problems_of(path)

    assert (problem.key, problem.message) == ("cluster", "expected a table, got a string")
    assert problem.line == line_of(path, "cluster =")


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        (f'redis = "redis://:{SECRET}@127.0.0.1:6379/0"', "redis", "must not carry a password"),
        (f'redis = "redis://me:{SECRET}@127.0.0.1:6379/0"', "redis", "must not carry a password"),
        (f'redis = "rediss://:{SECRET}@redis.internal/0"', "redis", "must not carry a password"),
        (f'redis = "redis://127.0.0.1/0?password={SECRET}"', "redis", "must not carry a password"),
        (f'redis = "unix://:{SECRET}@/run/redis.sock"', "redis", "must not carry a password"),
        (f'redis = "unix:///run/redis.sock?password={SECRET}"', "redis", "must not carry"),
        (
            f'redis = "redis://h/0"\npassword_env = "{SECRET}"',
            "password_env",
            "must name an environment variable (like REDIS_PASSWORD), not hold the password",
        ),
        (
            f'redis = "redis://h/0"\npassword = "{SECRET}"',
            "password",
            "secrets don't belong in the file: put the password in an environment variable",
        ),
        (f'redis = "redis://h/0"\nauth = "{SECRET}"', "auth", "secrets don't belong in the file"),
    ],
)
def test_a_password_in_the_file_is_refused_and_never_repeated(
    tmp_path: Path, lines: str, key: str, message: str
) -> None:
    path = with_cluster(tmp_path, lines)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    (problem,) = caught.value.problems
    assert (problem.key, problem.line) == (f"cluster.{key}", line_of(path, f"{key} ="))
    assert message in problem.message
    assert "password_env" in problem.message or key == "password_env"
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


def test_a_password_typed_in_a_flag_is_blamed_on_the_flag_and_not_repeated(
    tmp_path: Path,
) -> None:
    path = with_cluster(tmp_path, 'redis = "redis://127.0.0.1:6379/0"')

    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides=[f"cluster.redis=redis://:{SECRET}@127.0.0.1:6379/0"])

    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.key) == (FLAG_SOURCE, None, "cluster.redis")
    assert SECRET not in str(caught.value)


def test_a_flag_reaches_the_table(tmp_path: Path) -> None:
    path = with_cluster(tmp_path, 'redis = "redis://127.0.0.1:6379/0"')

    cluster = load_config(path, overrides=["cluster.heartbeat_s=0.25"]).cluster

    assert cluster is not None
    assert cluster.heartbeat_s == 0.25


def test_every_problem_of_the_table_is_reported_at_once(tmp_path: Path) -> None:
    path = with_cluster(
        tmp_path,
        'redis = "ftp://h/0"\nheartbeat_s = 0\nmax_deliveries = 0\nbogus = 1',
    )

    problems = problems_of(path)

    assert [p.key for p in problems] == [
        "cluster.redis",
        "cluster.heartbeat_s",
        "cluster.max_deliveries",
        "cluster.bogus",
    ]
    assert [p.line for p in problems] == sorted(p.line or 0 for p in problems)


def test_the_effective_settings_hold_the_variables_name_only(tmp_path: Path) -> None:
    path = with_cluster(
        tmp_path, 'redis = "redis://127.0.0.1:6379/0"\npassword_env = "REDIS_PASSWORD"'
    )

    settings = effective_settings(load_config(path))

    assert settings["cluster"]["password_env"] == "REDIS_PASSWORD"
    assert settings["cluster"]["redis"] == "redis://127.0.0.1:6379/0"


def test_settings_built_in_code_check_themselves() -> None:
    with pytest.raises(ConfigError) as caught:
        ClusterSettings(redis=f"redis://:{SECRET}@h/0", heartbeat_s=0)

    assert caught.value.keys == ("cluster.redis", "cluster.heartbeat_s")
    assert SECRET not in str(caught.value)


def test_the_examples_cluster_table_loads_once_uncommented(tmp_path: Path) -> None:
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    head, marker, block = text.partition("# [cluster]\n")
    assert marker, "config.example.toml documents [cluster]"
    uncommented = "".join(line.removeprefix("# ") for line in block.splitlines(keepends=True))
    path = write(tmp_path, head + "[cluster]\n" + uncommented)

    cluster = load_config(path).cluster

    assert cluster == ClusterSettings(
        redis="redis://127.0.0.1:6379/0",
        password_env="CRAWLDECK_REDIS_PASSWORD",
        prefix="crawldeck:transcripts-demo",
    )


def test_a_crawl_job_may_be_shared_by_a_cluster(tmp_path: Path) -> None:
    """Its sites are shared through Redis like the batches (`engine/cluster/shared_crawl.py`)."""
    text = MINIMAL + '\n[crawl]\ntargets = "domains.txt"\n'
    path = write(tmp_path, text + '\n[cluster]\nredis = "redis://10.0.0.5:6380/2"\n')

    config = load_config(path)

    assert config.crawl is not None and config.cluster is not None
