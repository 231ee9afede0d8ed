"""Opening the job's Redis: the password from its variable, a restart ridden out, an outage bounded.

Against a real `redis-server` (`--requirepass` where a password is asked),
killed and started again on the same port for the restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.cluster.redis_connection import (
    RedisUnavailable,
    connect_redis,
    masked,
    open_redis,
    redis_unavailable,
)
from engine.config.cluster_table import ClusterSettings
from engine.config.config_problem import ConfigError
from tests.redis_server import RedisServer, free_port

PASSWORD = "pw-Zq8!x7:@/s3cr3t"  # URL-hostile characters: it never goes through a URL
VARIABLE = "CRAWLDECK_TEST_REDIS_PASSWORD"


@pytest.fixture
def guarded_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", password=PASSWORD, appendonly=True) as server:
        yield server


def settings_for(url: str, **values: object) -> ClusterSettings:
    return ClusterSettings(redis=url, prefix="test", **values)  # type: ignore[arg-type]


async def test_the_password_comes_from_the_variable_the_table_names(
    guarded_server: RedisServer,
) -> None:
    settings = settings_for(guarded_server.url, password_env=VARIABLE)

    redis = await connect_redis(settings, {VARIABLE: PASSWORD})
    try:
        await redis.set("k", "v")
        assert await redis.get("k") == b"v"
        assert PASSWORD not in repr(redis)
        assert PASSWORD not in repr(redis.connection_pool)
    finally:
        await redis.aclose()


@pytest.mark.parametrize(("environ", "state"), [({}, "is not set"), ({VARIABLE: ""}, "is empty")])
def test_a_missing_variable_is_named_with_the_key_that_names_it(
    environ: dict[str, str], state: str
) -> None:
    settings = settings_for("redis://127.0.0.1:9/0", password_env=VARIABLE)

    with pytest.raises(ConfigError) as caught:
        open_redis(settings, environ, file="job.toml")

    (problem,) = caught.value.problems
    assert str(problem) == (
        f"job.toml: cluster.password_env: environment variable {VARIABLE} {state} "
        "(it should hold the Redis password)"
    )


async def test_a_wrong_password_ends_at_once_naming_the_variable_not_the_value(
    guarded_server: RedisServer,
) -> None:
    settings = settings_for(guarded_server.url, password_env=VARIABLE, outage_limit_s=30)
    wrong = "not-the-password-42"
    started = time.monotonic()

    with pytest.raises(RedisUnavailable) as caught:
        await connect_redis(settings, {VARIABLE: wrong})

    assert time.monotonic() - started < 5  # refused, not retried for the 30 s outage limit
    message = str(caught.value)
    assert message.startswith(f"Redis at {guarded_server.url} refused the password in {VARIABLE}")
    assert wrong not in message
    assert PASSWORD not in message
    assert "\n" not in message


async def test_a_redis_that_wants_a_password_the_table_does_not_name_says_so(
    guarded_server: RedisServer,
) -> None:
    with pytest.raises(RedisUnavailable, match="wants a password: name the variable"):
        await connect_redis(settings_for(guarded_server.url), {})


async def test_a_restart_of_redis_is_ridden_out(guarded_server: RedisServer) -> None:
    settings = settings_for(guarded_server.url, password_env=VARIABLE, outage_limit_s=30)
    redis = await connect_redis(settings, {VARIABLE: PASSWORD})
    try:
        await redis.set("kept", "before the restart")
        guarded_server.kill()

        # Asked while Redis is down: the command waits for it instead of failing.
        async def read_kept() -> bytes | str | None:
            value: bytes | str | None = await redis.get("kept")
            return value

        reading = asyncio.create_task(read_kept())
        await asyncio.sleep(0.3)
        assert not reading.done()
        await asyncio.to_thread(guarded_server.start)

        assert await asyncio.wait_for(reading, 10) == b"before the restart"
        await redis.set("after", "yes")
        assert await redis.get("after") == b"yes"
    finally:
        await redis.aclose()


async def test_a_redis_that_stays_away_ends_the_wait_at_the_outage_limit(
    redis_server: RedisServer,
) -> None:
    settings = settings_for(redis_server.url, outage_limit_s=1)
    redis = await connect_redis(settings, {})
    try:
        redis_server.kill()
        started = time.monotonic()

        with pytest.raises(RedisConnectionError) as caught:
            await redis.get("anything")

        waited = time.monotonic() - started
        assert 1.0 <= waited < 4.0
        error = redis_unavailable(redis, settings, caught.value)
        assert str(error).startswith(
            f"Redis at {redis_server.url} did not answer for 1 s ([cluster] outage_limit_s): "
        )
    finally:
        await redis.aclose()


async def test_a_blocking_read_that_fails_late_in_its_block_still_waits_the_whole_limit(
    redis_server: RedisServer,
) -> None:
    """The limit counts from the failure, not from when the read was sent: a worker
    blocked 2 s in XREAD when Redis goes away still waits out its outage limit."""
    settings = settings_for(redis_server.url, outage_limit_s=1.5)
    redis = await connect_redis(settings, {})
    try:
        reading = asyncio.create_task(redis.xread({"stream": "$"}, block=4000))
        await asyncio.sleep(2.0)
        redis_server.kill()
        gone = time.monotonic()

        with pytest.raises(RedisConnectionError):
            await reading

        assert 1.5 <= time.monotonic() - gone < 5.0
    finally:
        await redis.aclose()


async def test_a_redis_that_is_not_there_at_the_start_fails_the_connect_in_time() -> None:
    settings = settings_for(f"redis://127.0.0.1:{free_port()}/0", outage_limit_s=1)
    started = time.monotonic()

    with pytest.raises(RedisUnavailable, match="did not answer for 1 s"):
        await connect_redis(settings, {})

    assert time.monotonic() - started < 4.0


async def test_a_password_in_an_error_text_is_masked(guarded_server: RedisServer) -> None:
    settings = settings_for(guarded_server.url, password_env=VARIABLE)
    redis = open_redis(settings, {VARIABLE: PASSWORD})
    try:
        error = redis_unavailable(redis, settings, RedisConnectionError(f"echoed {PASSWORD} back"))
    finally:
        await redis.aclose()

    assert PASSWORD not in str(error)
    assert "echoed *** back" in str(error)
    assert masked(f"a{PASSWORD}b{PASSWORD}", PASSWORD) == "a***b***"
    assert masked("nothing to hide", None) == "nothing to hide"


@pytest.mark.parametrize("turns", range(8))
async def test_a_task_cancelled_while_a_command_goes_out_ends(
    redis_server: RedisServer, turns: int
) -> None:
    # Python 3.11's wait_for (inside redis-py) can drop a cancel that lands as a
    # command is written; the loop below would then block on Redis for ever.
    redis = await connect_redis(settings_for(redis_server.url), {})

    async def follow() -> None:
        while True:
            await redis.xread({"stream": "0-0"}, block=200)

    following = asyncio.create_task(follow())
    for _ in range(turns):
        await asyncio.sleep(0)  # cancelled at each step of sending the command in turn
    following.cancel()
    try:
        done, _ = await asyncio.wait([following], timeout=2)
        assert done, "the cancelled task went on reading"
        assert following.cancelled()
    finally:
        following.cancel()
        await redis.aclose()
