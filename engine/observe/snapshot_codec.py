"""A `Snapshot` as plain JSON values and back, exactly.

The control socket sends snapshots to other processes (`crawldeck attach`,
`crawldeck status`).  Encoding walks the dataclasses; decoding follows their
type hints, so a new snapshot field needs no change here.  Unknown keys are
ignored and missing ones take the field's default, so a viewer one version
apart still shows what it knows.

Event data is kept as JSON values: the engine only puts numbers, strings and
booleans there.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any

from engine.observe.snapshot import Snapshot


class SnapshotDecodeError(ValueError):
    """The data does not describe a snapshot."""


def encode_snapshot(snap: Snapshot) -> dict[str, Any]:
    """The snapshot as a dict of JSON values (str, numbers, bools, None, lists, dicts)."""
    encoded = _encode(snap)
    assert isinstance(encoded, dict)
    return encoded


def decode_snapshot(data: object) -> Snapshot:
    """The snapshot `encode_snapshot` made; `SnapshotDecodeError` if it isn't one."""
    try:
        snap = _decode(Snapshot, data)
    except (TypeError, ValueError, KeyError) as exc:
        raise SnapshotDecodeError(f"not a snapshot: {exc}") from exc
    assert isinstance(snap, Snapshot)
    return snap


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _decode(tp: Any, value: object) -> object:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                return _decode(option, value)
        raise ValueError(f"no type for {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in value)
        if len(args) != len(value):
            raise ValueError(f"expected {len(args)} items, got {len(value)}")
        return tuple(_decode(arg, item) for arg, item in zip(args, value, strict=True))
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        value_type = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return {str(k): _decode(value_type, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {tp.__name__}, got {type(value).__name__}")
        kwargs = {
            name: _decode(ftype, value[name]) for name, ftype in _field_types(tp) if name in value
        }
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return value
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise TypeError(f"expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"cannot decode {tp!r}")
