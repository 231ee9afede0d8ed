"""Redis Streams' replies as plain values, whichever protocol the client speaks.

A client may run RESP2 or RESP3, with or without `decode_responses`: the
queue and the collector read entries, ids and fields through these, so
they work with the client the cluster's connection hands them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError


async def create_group(redis: Redis, stream: str, group: str) -> None:
    """Create `group` on `stream` (and the stream), from its first entry; fine if it exists."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_entries(reply: Any) -> list[tuple[Any, Any]]:
    """The (id, fields) entries of an `XREADGROUP` reply, all streams together."""
    if not reply:
        return []
    streams: Iterable[tuple[Any, Any]] = reply.items() if isinstance(reply, dict) else reply
    return [(entry[0], entry[1]) for _stream, entries in streams for entry in entries]


def entry_fields(value: Any) -> dict[str, str]:
    """An entry's fields as text, from a mapping or a flat [field, value, …] list
    (a deleted entry's None gives no fields)."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {as_text(k): as_text(v) for k, v in value.items()}
    items = list(value)
    return {as_text(items[i]): as_text(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def as_int(value: Any) -> int:
    """A counter as Redis returns it (bytes, str, int or None for missing) as an int."""
    return int(value) if value not in (None, b"", "") else 0
