"""One worker process of the shared-budget tests: a `SharedKeyPool` of its own.

It joins the job's budgets, says it is ready (a list in Redis), waits for
the go (another list), then for `--seconds` takes leases on its `--key`
with `--concurrency` tasks — each lease returned at once, or with `--send`
a real chat request to the simulator at that base URL, its answer or 429
reported to the pool as the engine's outcomes do.  It prints one JSON line:
when each lease was reserved (Redis's clock) and what the sends came to.
The key's secret comes from `POOL_WORKER_SECRET`, never the command line.

    python -m tests.engine.cluster.pool_worker REDIS_URL PREFIX --key k:RPM:TPM ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter

from redis.asyncio import Redis

from engine.cluster.shared_key_pool import SharedKeyPool
from engine.config.settings import ProviderSettings
from engine.limits.key_pool import KeyLease, KeyState
from engine.limits.rate_limiter import KeyBudget
from engine.provider.client import CallResult, FailureKind, ProviderClients

MESSAGES = [{"role": "user", "content": "[id=a] a few words to summarise"}]
ESTIMATE = 40


def _limit(raw: str) -> int | None:
    return None if raw in ("", "-") else int(raw)


async def main(args: argparse.Namespace) -> dict[str, object]:
    alias, rpm, tpm = args.key.split(":")
    provider = ProviderSettings(name="sim", base_url=args.send or "unused", model="gpt-4o-mini")
    key = KeyState(
        f"sim/{alias}", alias, provider, KeyBudget(_limit(rpm), _limit(tpm)), time.monotonic
    )
    client = Redis.from_url(args.redis)
    clients = ProviderClients()
    if args.send:
        clients.add_key(key.key_id, os.environ["POOL_WORKER_SECRET"], args.send)
    pool = SharedKeyPool([key], client, args.prefix)
    reserved_at: list[float] = []
    outcomes: Counter[str] = Counter()

    async def send(lease: KeyLease) -> None:
        sent_at = time.monotonic()
        outcome = await clients.chat(key.key_id, provider.model, MESSAGES, 5.0)
        lease.returned()
        if isinstance(outcome, CallResult):
            used = outcome.prompt_tokens + outcome.completion_tokens
            pool.answered(lease, used, outcome.headers, outcome.latency_s, outcome.prompt_tokens)
            outcomes["answered"] += 1
            return
        pool.sync_headers(key, outcome.headers, lease)
        if outcome.kind is FailureKind.RATE_LIMITED:
            pool.refused(lease, outcome, sent_at)
        else:
            lease.release()
        outcomes[str(outcome.kind)] += 1

    async def take_leases(deadline: float) -> None:
        while time.monotonic() < deadline:
            lease = await pool.lease(ESTIMATE)
            reserved_at.append(lease.sent_at)
            if args.send:
                await send(lease)
            else:
                lease.returned()
                pool.answered(lease, ESTIMATE, {})
            pool.notify()

    try:
        await pool.open()
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(pool.run_writer())
            await client.rpush(args.ready, os.getpid())
            await client.blpop([args.go], timeout=60)
            deadline = time.monotonic() + args.seconds
            async with asyncio.TaskGroup() as takers:
                for _ in range(args.concurrency):
                    takers.create_task(take_leases(deadline))
            pool.close_writer()
            await writer
    finally:
        await clients.aclose()
        await client.aclose()
    return {"reserved_at": reserved_at, "outcomes": dict(outcomes)}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("redis")
    parser.add_argument("prefix")
    parser.add_argument("--key", required=True, help="ALIAS:RPM:TPM (- for no limit)")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--send", default="", help="the simulator's base URL")
    parser.add_argument("--ready", default="ready")
    parser.add_argument("--go", default="go")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))), flush=True)
