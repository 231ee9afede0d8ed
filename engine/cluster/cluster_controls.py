"""Controls for the whole cluster: sent once through Redis, applied by every worker to itself.

Concurrency (absolute or a step), a preset, pause/resume, drain and stop go
into a Redis Stream; each worker reads it from its own position with a
blocking `XREAD` and applies each command to its own `JobControls`.

Why a stream and not pub/sub: pub/sub delivers only to whoever listens at
that instant, so a worker reconnecting after a network blip or a Redis
restart would silently miss a pause.  A stream keeps the commands in order
(and on disk with the append-only file); a worker that was away reads on
from where it stopped, and one that joins late starts from the settings in
force.

Those settings live in a hash beside the stream, updated in the same Lua
script that appends the command, together with the id of the last command
they include.  A joining worker reads the hash (preset, then concurrency,
then paused), applies it, and reads the stream after that id: nothing is
missed and nothing applied twice.  Drain and stop are not kept there: they
tell the workers running now to finish; a worker started later is a new
decision of its operator.

A step (`adjust_concurrency(+4)`) is resolved in the script from the
cluster's value in force, so two operators stepping at once both count,
and what goes to the workers is the resulting absolute value: every worker
ends at the same setting whatever it had before.  Concurrency is per worker
(each worker's ceiling of requests in flight); the shared key budgets keep
the sum within the keys' limits.

Under the job's prefix:

    PREFIX:controls            stream  op, value (JSON), by (sender)
    PREFIX:control-settings    hash    concurrency, fetch_concurrency, preset, paused, last
    PREFIX:control-sent:ID     string  a command already applied (a retried send is not doubled)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.cluster.redis_connection import LONGEST_BLOCK_S, redis_unavailable
from engine.config.cluster_table import ClusterSettings
from engine.config.config_problem import ConfigError
from engine.config.presets import preset_from_values
from engine.config.setting_bounds import CONCURRENCY, FETCH_CONCURRENCY, Bound
from engine.config.settings import Preset
from engine.control.controls import Adjustment, JobControls

__all__ = [
    "ClusterCommand",
    "ClusterControlState",
    "ClusterControls",
    "ControlListener",
    "apply_command",
    "control_keys",
]

STREAM_LENGTH = 1000
"""Commands kept (about); the hash holds what they add up to, so older ones can go."""
SENT_MEMORY_S = 600  # a retried send arrives within the outage limit (at most an hour)
_READ_BATCH = 100
_PRESET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SIMPLE = ("pause", "resume", "drain", "stop")
_SETTING = {"concurrency": CONCURRENCY, "fetch_concurrency": FETCH_CONCURRENCY}

# KEYS: stream, settings hash, sent marker.
# ARGV: op, value (JSON), sender, stream length; for a step also delta, base, low, high.
# Returns the stream id appended ("" when a step changed nothing) and, for a
# step, "old new asked".  A marker already set returns what the first send did.
_PUBLISH = """
local earlier = redis.call('GET', KEYS[3])
if earlier then return cjson.decode(earlier) end
local op, value = ARGV[1], ARGV[2]
local step = ''
if op == 'adjust_concurrency' or op == 'adjust_fetch_concurrency' then
  local field = string.sub(op, 8)
  local old = tonumber(redis.call('HGET', KEYS[2], field)) or tonumber(ARGV[6])
  local asked = old + tonumber(ARGV[5])
  local new = math.min(tonumber(ARGV[8]), math.max(tonumber(ARGV[7]), asked))
  step = old .. ' ' .. new .. ' ' .. asked
  op, value = 'set_' .. field, tostring(new)
  if new == old then
    local result = {'', step}
    redis.call('SET', KEYS[3], cjson.encode(result), 'EX', ARGV[9])
    return result
  end
end
if op == 'set_concurrency' then
  redis.call('HSET', KEYS[2], 'concurrency', value)
elseif op == 'set_fetch_concurrency' then
  redis.call('HSET', KEYS[2], 'fetch_concurrency', value)
elseif op == 'apply_preset' then
  -- A preset brings its own concurrency.
  redis.call('HSET', KEYS[2], 'preset', value)
  redis.call('HDEL', KEYS[2], 'concurrency')
elseif op == 'pause' then
  redis.call('HSET', KEYS[2], 'paused', '1')
elseif op == 'resume' then
  redis.call('HSET', KEYS[2], 'paused', '0')
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*',
  'op', op, 'value', value, 'by', ARGV[3])
redis.call('HSET', KEYS[2], 'last', id)
local result = {id, step}
redis.call('SET', KEYS[3], cjson.encode(result), 'EX', ARGV[9])
return result
"""


def control_keys(prefix: str) -> tuple[str, str]:
    """The stream of commands and the hash of settings in force, under `prefix`."""
    return f"{prefix}:controls", f"{prefix}:control-settings"


@dataclass(frozen=True, slots=True)
class ClusterCommand:
    """One control for every worker, as read from the stream.

    `op` is set_concurrency, set_fetch_concurrency, apply_preset, pause,
    resume, drain or stop; `value` an int, a preset's name or its values.
    """

    op: str
    value: Any = None
    sender: str = ""
    stream_id: str = ""


@dataclass(frozen=True, slots=True)
class ClusterControlState:
    """The cluster-wide settings in force, which a joining worker starts from.

    None: never set for the cluster (each worker keeps its job file's).
    `preset` is a name or a preset's values; `last` the id of the last
    command the settings include.
    """

    concurrency: int | None = None
    fetch_concurrency: int | None = None
    preset: str | dict[str, Any] | None = None
    paused: bool = False
    last: str = "0-0"

    def commands(self) -> tuple[ClusterCommand, ...]:
        """The settings as the commands that bring a new worker to them, in order."""
        commands: list[ClusterCommand] = []
        if self.preset is not None:
            commands.append(ClusterCommand("apply_preset", self.preset))
        if self.concurrency is not None:
            commands.append(ClusterCommand("set_concurrency", self.concurrency))
        if self.fetch_concurrency is not None:
            commands.append(ClusterCommand("set_fetch_concurrency", self.fetch_concurrency))
        if self.paused:
            commands.append(ClusterCommand("pause"))
        return tuple(commands)


class ClusterControls:
    """Sends controls to every worker of the job (including this one, through its listener).

    Values are checked before they are sent (a concurrency outside its
    bound raises `ValueError`, a bad preset `ConfigError`), so one bad value
    never reaches the workers.  A Redis gone past the outage limit raises
    `RedisUnavailable`.
    """

    def __init__(self, redis: Redis, settings: ClusterSettings, *, sender: str = "") -> None:
        self.redis = redis
        self.settings = settings
        self.sender = sender
        self._stream, self._hash = control_keys(settings.prefix)
        self._publish = redis.register_script(_PUBLISH)

    async def set_concurrency(self, value: int) -> str:
        """Every worker's most requests in flight; the command's stream id."""
        value = CONCURRENCY.check("concurrency", value)
        stream_id, _ = await self._send("set_concurrency", value)
        return stream_id

    async def set_fetch_concurrency(self, value: int) -> str:
        """Every crawling worker's fetches in flight; the command's stream id."""
        value = FETCH_CONCURRENCY.check("fetch concurrency", value)
        stream_id, _ = await self._send("set_fetch_concurrency", value)
        return stream_id

    async def adjust_concurrency(self, delta: int, *, base: int) -> Adjustment:
        """Step the cluster's concurrency by `delta` from the value in force.

        `base` is taken when the cluster has none yet (the sender's own value).
        """
        return await self._step("concurrency", CONCURRENCY, delta, base)

    async def adjust_fetch_concurrency(self, delta: int, *, base: int) -> Adjustment:
        """Step the cluster's fetch concurrency by `delta`; `base` as for `adjust_concurrency`."""
        return await self._step("fetch_concurrency", FETCH_CONCURRENCY, delta, base)

    async def apply_preset(self, preset: str | Preset) -> str:
        """Every worker switches to a preset: one the job names, or a whole (checked) value."""
        if isinstance(preset, Preset):
            values = dataclasses.asdict(preset_from_values(preset, {}, source="cluster preset"))
            stream_id, _ = await self._send("apply_preset", values)
            return stream_id
        if not _PRESET_NAME.fullmatch(preset) or preset.endswith(".toml"):
            # A name only: a path would make every worker open a file someone chose.
            raise ValueError(f"not a preset name: {preset!r}")
        stream_id, _ = await self._send("apply_preset", preset)
        return stream_id

    async def pause(self) -> str:
        """Every worker admits no new requests (and a worker that joins starts paused)."""
        return (await self._send("pause"))[0]

    async def resume(self) -> str:
        """Every worker admits requests again."""
        return (await self._send("resume"))[0]

    async def drain(self) -> str:
        """Every running worker finishes what is in flight, stores it, and stops."""
        return (await self._send("drain"))[0]

    async def stop(self) -> str:
        """Every running worker stops now; what was in flight stays pending."""
        return (await self._send("stop"))[0]

    async def state(self) -> ClusterControlState:
        """The cluster-wide settings in force."""
        try:
            raw = await self.redis.hgetall(self._hash)
        except RedisError as error:
            raise redis_unavailable(self.redis, self.settings, error) from None
        return _state(raw)

    async def _step(self, field: str, bound: Bound, delta: int, base: int) -> Adjustment:
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise ValueError(f"{field}: a step is a whole number (got {delta!r})")
        base = bound.check(field.replace("_", " "), base)
        setting = field.replace("_", " ")
        _, step = await self._send(
            f"adjust_{field}", None, extra=(delta, base, bound.low, bound.high)
        )
        old, new, asked = (int(part) for part in step.split())
        return Adjustment(setting, old, new, asked)

    async def _send(
        self, op: str, value: object = None, *, extra: tuple[int, ...] = ()
    ) -> tuple[str, str]:
        # One id per send: redis-py may retry the script after a lost answer,
        # and the marker keeps a step from being taken twice.
        sent = f"{self.settings.prefix}:control-sent:{secrets.token_hex(8)}"
        args: list[str | int] = [op, json.dumps(value), self.sender, STREAM_LENGTH]
        args += list(extra) if extra else [0, 0, 0, 0]
        args.append(SENT_MEMORY_S)
        try:
            stream_id, step = await self._publish(keys=[self._stream, self._hash, sent], args=args)
        except RedisError as error:
            raise redis_unavailable(self.redis, self.settings, error) from None
        return _text(stream_id), _text(step)


def apply_command(target: JobControls, command: ClusterCommand) -> None:
    """Apply one cluster command to this worker's controls.

    Raises what the controls raise for a value they refuse (`ValueError`,
    `KeyError` for a preset this job does not know, `ConfigError`), and
    `ValueError` for a command this version does not know.
    """
    op, value = command.op, command.value
    if op in _SIMPLE:
        getattr(target, op)()
    elif op == "set_concurrency":
        target.set_concurrency(_whole(value))
    elif op == "set_fetch_concurrency":
        target.set_fetch_concurrency(_whole(value))
    elif op == "apply_preset":
        if isinstance(value, dict):
            target.apply_preset(preset_from_values(Preset(), value, source="cluster preset"))
        elif (
            isinstance(value, str) and _PRESET_NAME.fullmatch(value) and not value.endswith(".toml")
        ):
            target.apply_preset(value)
        else:
            raise ValueError("apply_preset needs a preset's name or its values")
    else:
        raise ValueError(f"unknown cluster control {op[:40]!r}")


AppliedHook = Callable[[ClusterCommand, str | None], None]
"""Told of each command a worker applied: None, or why its controls refused it (one line)."""


class ControlListener:
    """Applies the cluster's controls to this worker: the settings in force, then each command.

    `run()` first catches up (`catch_up()`), then blocks on the stream for
    the next commands until cancelled.  A command the worker's controls
    refuse is told to `on_applied` with the reason and skipped: one worker's
    refusal must not stop it from following the rest.  A Redis gone past
    the outage limit ends `run()` with `RedisUnavailable`.
    """

    def __init__(
        self,
        redis: Redis,
        settings: ClusterSettings,
        target: JobControls,
        *,
        on_applied: AppliedHook | None = None,
        block_s: float = LONGEST_BLOCK_S,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.target = target
        self.position = "0-0"  # the id of the last command applied
        self.applied = 0
        self.caught_up = asyncio.Event()  # set once the settings in force are applied
        self._on_applied = on_applied
        self._block_ms = max(1, int(min(block_s, LONGEST_BLOCK_S) * 1000))
        self._stream, self._hash = control_keys(settings.prefix)

    async def catch_up(self) -> ClusterControlState:
        """Apply the settings in force now; reading the stream goes on after them."""
        try:
            raw = await self.redis.hgetall(self._hash)
        except RedisError as error:
            raise redis_unavailable(self.redis, self.settings, error) from None
        state = _state(raw)
        for command in state.commands():
            self._apply(command)
        self.position = state.last
        self.caught_up.set()
        return state

    async def run(self) -> None:
        """Catch up, then apply every command as it comes, until cancelled."""
        await self.catch_up()
        while True:
            try:
                # [[stream, [(id, {field: value}), ...]]], or empty when the block timed out
                answer: Any = await self.redis.xread(
                    {self._stream: self.position}, count=_READ_BATCH, block=self._block_ms
                )
            except RedisError as error:
                raise redis_unavailable(self.redis, self.settings, error) from None
            for _stream, entries in answer or ():
                for raw_id, fields in entries:
                    self.position = _text(raw_id)
                    self._apply(_command(self.position, fields))

    def _apply(self, command: ClusterCommand) -> None:
        try:
            apply_command(self.target, command)
        except KeyError as exc:  # an unknown preset: its message is the first argument
            self._told(command, str(exc.args[0]) if exc.args else "unknown preset")
        except (ValueError, ConfigError) as exc:
            self._told(command, " ".join(str(exc).split()) or type(exc).__name__)
        else:
            self.applied += 1
            self._told(command, None)

    def _told(self, command: ClusterCommand, refusal: str | None) -> None:
        if self._on_applied is not None:
            self._on_applied(command, refusal)


def _command(stream_id: str, fields: Mapping[bytes | str, bytes | str]) -> ClusterCommand:
    decoded = {_text(key): _text(value) for key, value in fields.items()}
    try:
        value = json.loads(decoded.get("value", "null"))
    except ValueError:
        value = None  # refused by `apply_command` for the op that needed it
    return ClusterCommand(decoded.get("op", ""), value, decoded.get("by", ""), stream_id)


def _state(raw: Mapping[bytes | str, bytes | str]) -> ClusterControlState:
    fields = {_text(key): _text(value) for key, value in raw.items()}
    preset: str | dict[str, Any] | None = None
    if "preset" in fields:
        try:
            preset = json.loads(fields["preset"])
        except ValueError:
            preset = None
    return ClusterControlState(
        concurrency=_number(fields.get("concurrency")),
        fetch_concurrency=_number(fields.get("fetch_concurrency")),
        preset=preset if isinstance(preset, str | dict) else None,
        paused=fields.get("paused") == "1",
        last=fields.get("last", "0-0"),
    )


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
