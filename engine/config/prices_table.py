"""The `[prices."MODEL"]` tables: what each model costs, in US dollars per million tokens.

    [prices."gpt-4o-mini"]
    input_per_m = 0.15
    output_per_m = 0.60

A model's price applies to every provider serving that model that does
not give its own `price_input_per_m` / `price_output_per_m` (a provider's
own price is its deal for the model, so it wins, field by field).  A price
for a model no provider serves is refused, as a typo would be.  A job with
`[job] budget_usd` needs a price for every provider's model: without one
its requests would count as free, and the cap would not hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from engine.config.config_problem import KeyPath
from engine.config.settings import ProviderSettings
from engine.config.table_check import TableChecker, apply_rules

PRICE_FIELDS = {"input_per_m": "price_input_per_m", "output_per_m": "price_output_per_m"}
"""Each `[prices."MODEL"]` key and the provider field it fills."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's price in US dollars per million tokens in and out."""

    input_per_m: float = 0.0
    output_per_m: float = 0.0


def _a_price(value: Any) -> bool:
    return bool(math.isfinite(value) and value >= 0)


def read_prices_table(
    checker: TableChecker, raw: Mapping[str, Any], path: KeyPath
) -> dict[str, tuple[ModelPrice, frozenset[str]]]:
    """Each model's price and the keys its table gave; problems go to `checker`."""
    prices: dict[str, tuple[ModelPrice, frozenset[str]]] = {}
    for model, value in raw.items():
        model_path: KeyPath = (*path, model)
        table = checker.table(value, model_path)
        price, _ = checker.settings(ModelPrice(), table, model_path)
        checker.report(
            model_path,
            apply_rules(
                price,
                (
                    ("input_per_m", _a_price, "must be 0 or more (dollars per million tokens)"),
                    ("output_per_m", _a_price, "must be 0 or more (dollars per million tokens)"),
                ),
            ),
        )
        given = frozenset(key for key in table if key in PRICE_FIELDS)
        missing = [key for key in PRICE_FIELDS if key not in given]
        if missing:
            # Half a price would make the other half free without anyone saying so.
            checker.add(model_path, f"needs {' and '.join(missing)} (dollars per million tokens)")
        prices[model] = (price, given)
    return prices


def priced_providers(
    checker: TableChecker,
    providers: Sequence[ProviderSettings],
    provider_tables: Sequence[Mapping[str, Any]],
    prices: Mapping[str, tuple[ModelPrice, frozenset[str]]],
    path: KeyPath,
) -> tuple[tuple[ProviderSettings, ...], list[int]]:
    """The providers with their models' prices filled in where they gave none of their own.

    Also returns the indexes of providers with no price at all (neither their
    own fields nor their model's table), for a budget to refuse.
    """
    served = {provider.model for provider in providers}
    for model in prices:
        if model not in served:
            models = ", ".join(sorted(served)) or "none"
            checker.add((*path, model), f"no provider serves model {model!r} (models: {models})")
    priced: list[ProviderSettings] = []
    unpriced: list[int] = []
    for index, provider in enumerate(providers):
        table = provider_tables[index] if index < len(provider_tables) else {}
        own = {field for field in PRICE_FIELDS.values() if field in table}
        price, given = prices.get(provider.model, (ModelPrice(), frozenset()))
        changes = {
            field: getattr(price, key)
            for key, field in PRICE_FIELDS.items()
            if key in given and field not in own
        }
        if not own and not given:
            unpriced.append(index)
        priced.append(replace(provider, **changes))
    return tuple(priced), unpriced
