"""Opening the job's Redis: the password from the environment, a restart ridden out, never forever.

    redis = await connect_redis(config.cluster, os.environ, file=str(config.source))
    ...
    await redis.aclose()

Every command is retried on a lost connection or a timeout with an
exponential backoff (redis-py's `Retry`), so a Redis that restarts — the
append-only file reloading, `LOADING` answers meanwhile — costs the workers
a pause, not the job.  The retries of one command stop `outage_limit_s` after its first
failure (plus at most one connect timeout): a Redis that stays away longer
makes the command fail, and whatever ran it ends the job with `RedisUnavailable`, one line
naming the Redis and the limit.  A refused password is not retried: it
will not get better.

The password is read from the variable `password_env` names, handed to
redis-py and nowhere else; error texts pass through `masked` before they are
shown, and redis-py's own reprs print `<REDACTED>` for it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.cluster.cancel_guard import raise_if_cancelled
from engine.config.cluster_table import ClusterSettings
from engine.config.config_problem import ConfigError, ConfigProblem

__all__ = [
    "LONGEST_BLOCK_S",
    "DeadlineRetry",
    "RedisUnavailable",
    "cluster_password",
    "connect_redis",
    "connection_troubles",
    "masked",
    "open_redis",
    "redis_unavailable",
    "retry_policy",
]

RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0  # a Redis back from a restart is found within a second
CONNECT_TIMEOUT_S = 5.0
LONGEST_BLOCK_S = 5.0
"""A blocking read (`XREAD`/`XREADGROUP ... BLOCK`) blocks at most this long per call."""
# Past this a command's answer is given up on (and retried): longer than any
# blocking read, so those end by themselves first.
SOCKET_TIMEOUT_S = LONGEST_BLOCK_S + 10.0
# Each blocking read holds a connection while it waits; the rest share what is left.
MAX_CONNECTIONS = 64
MASK = "***"

_RETRIED = (RedisConnectionError, RedisTimeoutError)
_REFUSED = (AuthenticationError, AuthorizationError)  # ConnectionErrors that retrying won't mend


class _Deadline:
    """When the outermost retry of the running task gives up: set at its first failure."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None


_DEADLINE: ContextVar[_Deadline | None] = ContextVar("redis_retry_deadline", default=None)
_T = TypeVar("_T")


class RedisUnavailable(Exception):
    """The job's Redis is gone past `outage_limit_s`, or refuses this worker: the job ends.

    The message is one line for the user, with no password in it.
    """


def masked(text: str, password: str | None) -> str:
    """`text` with every occurrence of `password` replaced by `***`."""
    if not password:
        return text
    return text.replace(password, MASK)


class _TroubleCount:
    """Command failures seen by a client's retry policy, every connection's together:
    redis-py deep-copies the policy into each connection, and this stays one."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> _TroubleCount:
        return self


class DeadlineRetry(Retry):
    """redis-py's `Retry`, bounded by time instead of a count: a command gives up `limit_s` on.

    redis-py nests retries (a command's retry reconnects, and connecting
    retries too); counted retries would multiply, so the first retry in a
    task sets one deadline that the nested ones share.  The clock starts at
    the first failure, not when the command was sent: a blocking read that
    fails seconds into its block still gets the whole limit.
    """

    def __init__(self, limit_s: float) -> None:
        super().__init__(
            ExponentialBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S),
            retries=-1,  # until the deadline
            supported_errors=_RETRIED,
            is_retryable=lambda error: not isinstance(error, _REFUSED),
        )
        self.limit_s = limit_s
        # Failures seen, every command together: a blocking read whose connection
        # dropped may have lost a reply Redis had already sent (`connection_troubles`).
        self.troubles = _TroubleCount()

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[_T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        outer = _DEADLINE.get()
        deadline = outer if outer is not None else _Deadline()
        token = _DEADLINE.set(deadline)

        def in_time(error: Exception) -> bool:
            self.troubles.count += 1
            if is_retryable is not None and not is_retryable(error):
                return False
            if deadline.at is None:
                deadline.at = time.monotonic() + self.limit_s
            return time.monotonic() < deadline.at

        try:
            result = await super().call_with_retry(
                do, fail, is_retryable=in_time, with_failure_count=with_failure_count
            )
        finally:
            _DEADLINE.reset(token)
        raise_if_cancelled()  # a cancel redis-py's write may have dropped (Python 3.11)
        return result


def connection_troubles(redis: Redis) -> int:
    """The command failures `redis`'s retry policy has seen so far (0 for a client made
    without it): a change says a reply may have been lost on the way."""
    retry = redis.connection_pool.connection_kwargs.get("retry")
    return retry.troubles.count if isinstance(retry, DeadlineRetry) else 0


def retry_policy(outage_limit_s: float) -> Retry:
    """Retry a lost connection or a timeout for `outage_limit_s`; never a refused password."""
    return DeadlineRetry(outage_limit_s)


def cluster_password(
    settings: ClusterSettings, environ: Mapping[str, str], *, file: str = ""
) -> str | None:
    """The password from the variable `password_env` names (None when it names none).

    A variable that is unset or empty is a `ConfigError` naming the variable,
    never a value.
    """
    name = settings.password_env
    if not name:
        return None
    value = environ.get(name)
    if value:
        return value
    state = "is not set" if value is None else "is empty"
    problem = ConfigProblem(
        file,
        None,
        "cluster.password_env",
        f"environment variable {name} {state} (it should hold the Redis password)",
    )
    raise ConfigError([problem])


def open_redis(settings: ClusterSettings, environ: Mapping[str, str], *, file: str = "") -> Redis:
    """A client of the job's Redis (nothing is sent yet); `aclose()` it when done.

    Raises `ConfigError` when `password_env`'s variable is missing.  Answers
    are bytes, as redis-py gives them by default.
    """
    password = cluster_password(settings, environ, file=file)
    pool = BlockingConnectionPool.from_url(
        settings.redis,
        password=password,
        retry=retry_policy(settings.outage_limit_s),
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
        # Waiting for a free connection is bounded like waiting for Redis.
        timeout=settings.outage_limit_s,
    )
    return Redis.from_pool(pool)


async def connect_redis(
    settings: ClusterSettings, environ: Mapping[str, str], *, file: str = ""
) -> Redis:
    """`open_redis`, then a `PING`: a Redis that is away, or refuses us, fails here, once.

    Raises `ConfigError` for a missing password variable and
    `RedisUnavailable` when Redis does not answer within the outage limit or
    refuses the password.
    """
    redis = open_redis(settings, environ, file=file)
    try:
        await redis.ping()
    except RedisError as error:
        await redis.aclose()
        raise redis_unavailable(redis, settings, error) from None
    return redis


def redis_unavailable(
    redis: Redis, settings: ClusterSettings, error: BaseException
) -> RedisUnavailable:
    """The one-line error a worker ends with when `error` came from the job's Redis."""
    password = redis.connection_pool.connection_kwargs.get("password")
    where = f"Redis at {settings.redis}"
    if isinstance(error, _REFUSED):
        if settings.password_env:
            why = f"refused the password in {settings.password_env}"
        else:
            why = "wants a password: name the variable that holds it with [cluster] password_env"
        return RedisUnavailable(masked(f"{where} {why} ({_one_line(error)})", password))
    if isinstance(error, _RETRIED):
        return RedisUnavailable(
            masked(
                f"{where} did not answer for {settings.outage_limit_s:g} s "
                f"([cluster] outage_limit_s): {_one_line(error)}",
                password,
            )
        )
    return RedisUnavailable(masked(f"{where} failed: {_one_line(error)}", password))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
