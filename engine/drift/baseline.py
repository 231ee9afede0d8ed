"""The baseline: what normal output looked like, kept so later runs can judge against it.

A `Baseline` holds the raw samples of each distribution feature (the PSI
bins and the ADWIN ranks are both derived from them), event counts for each
rate, and the centroid of the output embeddings.  It serialises to JSON
bytes, so the engine can store the baseline learnt in one run and load it
into a later run of the same job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ANSWER_FEATURES",
    "DISTRIBUTIONS",
    "RATES",
    "RESULT_FEATURES",
    "Baseline",
    "BaselineFormatError",
    "Feature",
]

FORMAT = "crawldeck-drift-baseline"
VERSION = 1


@dataclass(frozen=True, slots=True)
class Feature:
    """A monitored quantity: its metric name, a short label and its unit."""

    name: str
    label: str  # fits the dashboard's 15-character label column
    unit: str
    per: str  # the sample unit: "answer", "result", "call" or "chunk"


ANSWER_FEATURES: tuple[Feature, ...] = (
    Feature("output_tokens", "output tokens", "tokens/chunk", "answer"),
    Feature("latency", "latency", "s", "answer"),
    Feature("cost", "cost", "$/chunk", "answer"),
)
"""Distributions measured once per answer: every chunk of an answer shares them."""

RESULT_FEATURES: tuple[Feature, ...] = (
    Feature("answer_chars", "answer length", "chars", "result"),
    Feature("items", "items", "items", "result"),
)
"""Distributions measured once per chunk result."""

DISTRIBUTIONS: tuple[Feature, ...] = ANSWER_FEATURES + RESULT_FEATURES

RATES: tuple[Feature, ...] = (
    Feature("parse_failures", "parse failures", "answers", "answer"),
    # Per answer, not per chunk: one truncated answer drops several ids at
    # once, and counting them as independent chunks makes chance look like drift.
    Feature("missing_ids", "missing ids", "parsed answers", "answer"),
    Feature("refusals", "refusals/empty", "results", "result"),
    # Per call, answered or not: 5xx, resets and hangs are the provider's.
    # 429s are not calls here (how many come depends on how hard the job
    # presses its keys, which is the key pool's business).
    Feature("server_errors", "server errors", "calls", "call"),
)
"""Proportions: events out of trials, each in its own unit."""


class BaselineFormatError(ValueError):
    """Bytes that are not a baseline this version can read; the message says what is wrong."""


FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True, eq=False)
class Baseline:
    """What normal looked like: samples, rates and the embedding centroid.

    `samples` maps each of `DISTRIBUTIONS` to its samples; `rates` maps each
    of `RATES` to (events, trials).  Arrays are read-only, mappings are
    views: a baseline is a value.
    """

    results: int
    answers: int
    samples: Mapping[str, FloatArray]
    rates: Mapping[str, tuple[int, int]]
    embedding_centroid: FloatArray | None = None
    embedding_count: int = 0
    # Mean cosine distance of the baseline's embeddings to their centroid:
    # how varied normal output is, the scale for the embeddings threshold.
    embedding_spread: float = 0.0

    def __post_init__(self) -> None:
        samples = {name: _read_only(values) for name, values in self.samples.items()}
        missing = [f.name for f in DISTRIBUTIONS if f.name not in samples]
        missing += [f.name for f in RATES if f.name not in self.rates]
        if missing:
            raise BaselineFormatError(f"baseline lacks {', '.join(missing)}")
        object.__setattr__(self, "samples", MappingProxyType(samples))
        rates = {name: (int(k), int(n)) for name, (k, n) in self.rates.items()}
        object.__setattr__(self, "rates", MappingProxyType(rates))
        if self.embedding_centroid is not None:
            object.__setattr__(self, "embedding_centroid", _read_only(self.embedding_centroid))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Baseline):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    # ------------------------------------------------------------ JSON
    def to_json(self) -> bytes:
        """UTF-8 JSON; floats are written exactly, so `from_json` gives an equal baseline."""
        centroid = self.embedding_centroid
        document = {
            "format": FORMAT,
            "version": VERSION,
            "results": self.results,
            "answers": self.answers,
            "samples": {name: values.tolist() for name, values in self.samples.items()},
            "rates": {name: list(counts) for name, counts in self.rates.items()},
            "embedding": None
            if centroid is None
            else {
                "centroid": centroid.tolist(),
                "count": self.embedding_count,
                "spread": self.embedding_spread,
            },
        }
        return json.dumps(document, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> Baseline:
        """The baseline `to_json` wrote; `BaselineFormatError` for anything else."""
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BaselineFormatError(f"baseline is not JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise BaselineFormatError(f"not a drift baseline (no format {FORMAT!r})")
        if document.get("version") != VERSION:
            raise BaselineFormatError(
                f"baseline version {document.get('version')!r}; this crawldeck reads {VERSION}"
            )
        samples = _mapping(document, "samples")
        rates = _mapping(document, "rates")
        # Saved before server errors were counted: no calls to judge them by,
        # so that gate waits for a baseline that has them; the rest still apply.
        rates.setdefault("server_errors", [0, 0])
        embedding = document.get("embedding")
        centroid: FloatArray | None = None
        count, spread = 0, 0.0
        if embedding is not None:
            if not isinstance(embedding, dict):
                raise BaselineFormatError("baseline embedding: must be an object or null")
            centroid = _floats(embedding.get("centroid"), "embedding.centroid")
            count = _count(embedding.get("count"), "embedding.count")
            spread = float(_floats([embedding.get("spread")], "embedding.spread")[0])
        return cls(
            results=_count(document.get("results"), "results"),
            answers=_count(document.get("answers"), "answers"),
            samples={name: _floats(values, f"samples.{name}") for name, values in samples.items()},
            rates={name: _pair(counts, f"rates.{name}") for name, counts in rates.items()},
            embedding_centroid=centroid,
            embedding_count=count,
            embedding_spread=spread,
        )

    # ------------------------------------------------------------ text
    def describe(self) -> list[str]:
        """Lines for `crawldeck baseline show`: sizes, each feature's spread, each rate."""
        lines = [f"baseline of {self.results} results from {self.answers} answers"]
        for feature in DISTRIBUTIONS:
            values = self.samples[feature.name]
            if values.size == 0:
                lines.append(f"  {feature.label:<15} no samples")
                continue
            p10, p50, p90 = np.quantile(values, [0.1, 0.5, 0.9])
            lines.append(
                f"  {feature.label:<15} median {_number(p50)} {feature.unit}"
                f"  (p10 {_number(p10)}, p90 {_number(p90)}; {values.size} {feature.per}s)"
            )
        for feature in RATES:
            k, n = self.rates[feature.name]
            share = f"{100.0 * k / n:.1f}%" if n else "–"
            lines.append(f"  {feature.label:<15} {share}  ({k} of {n} {feature.unit})")
        if self.embedding_centroid is None:
            lines.append(f"  {'embeddings':<15} none")
        else:
            lines.append(
                f"  {'embeddings':<15} centroid of {self.embedding_count}"
                f" (dimension {self.embedding_centroid.size}),"
                f" spread {self.embedding_spread:.3f} cosine distance"
            )
        return lines


def _read_only(values: ArrayLike) -> FloatArray:
    array = np.array(values, dtype=np.float64)  # a copy: the caller's array stays theirs
    array.setflags(write=False)
    return array


def _number(value: float) -> str:
    """Three significant figures, without scientific notation for everyday sizes."""
    if value == 0 or 0.01 <= abs(value) < 1e6:
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return f"{value:.2e}"


def _mapping(document: dict[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key)
    if not isinstance(value, dict):
        raise BaselineFormatError(f"baseline {key}: must be an object")
    return value


def _floats(values: Any, key: str) -> FloatArray:
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise BaselineFormatError(f"baseline {key}: must be a list of finite numbers")
    return np.array(values, dtype=np.float64)


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BaselineFormatError(f"baseline {key}: must be a whole number ≥ 0 (got {value!r})")
    return value


def _pair(value: Any, key: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise BaselineFormatError(f"baseline {key}: must be [events, trials]")
    events, trials = _count(value[0], key), _count(value[1], key)
    if events > trials:
        raise BaselineFormatError(f"baseline {key}: more events than trials ({events} > {trials})")
    return events, trials
