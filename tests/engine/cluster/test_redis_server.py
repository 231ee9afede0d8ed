"""The tests' Redis is a real server: it answers, keeps data over a restart with the
append-only file on, and is gone when stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.redis_server import RedisServer


async def test_the_server_answers_on_its_own_port(redis_client: Redis) -> None:
    assert await redis_client.ping()
    await redis_client.xadd("s", {"a": "1"})
    assert await redis_client.xlen("s") == 1


async def test_with_the_append_only_file_a_restart_keeps_what_was_written(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r", appendonly=True) as server:
        client = Redis.from_url(server.url)
        await client.set("kept", "yes")
        await client.aclose()
        server.kill()
        server.start()
        client = Redis.from_url(server.url)
        assert await client.get("kept") == b"yes"
        await client.aclose()


async def test_a_stopped_server_refuses_connections(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    url = server.url
    server.stop()
    client = Redis.from_url(url)
    with pytest.raises(RedisConnectionError):
        await client.ping()
    await client.aclose()
