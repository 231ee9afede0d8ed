"""Which route each provider takes: its own `mode`, else the mode of the preset in force.

A `[presets.NAME]` table may say `mode = "batch"` (or `"online"`): it applies
to the job's providers whose table does not say its own `mode`.  The route is
chosen once, at start, from the preset in force: the batch route's batches
are followed by the run that submitted them, so switching mid-run to a preset
whose mode would move a provider to the other route is refused with one line
(`switch_refusal`), never silently ignored.  Start the job again with that
preset to change route.

A job may mix the routes: its batch-mode providers take the bulk, its online
providers what the batch route hands them (`mixing_findings` checks that a
provider's `batch_online_after_s` has somewhere online to hand it to).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from engine.config.config_problem import KeyPath
from engine.config.settings import ProviderMode, ProviderSettings

__all__ = ["mixing_findings", "providers_in_mode", "switch_refusal"]

_WINDOW_S = 24 * 3600.0  # batch_window "24h", the only one providers offer


def providers_in_mode(
    providers: Sequence[ProviderSettings], own_mode: Sequence[bool], mode: ProviderMode | None
) -> tuple[ProviderSettings, ...]:
    """`providers` with the preset's `mode` given to those without their own (`own_mode`)."""
    if mode is None:
        return tuple(providers)
    return tuple(
        provider if own else replace(provider, mode=mode)
        for provider, own in zip(providers, own_mode, strict=True)
    )


def mixing_findings(providers: Sequence[ProviderSettings]) -> list[tuple[KeyPath, str]]:
    """What is wrong with the job's routes together: a cut-off with nowhere online to go,
    one that comes no sooner than the batch's deadline, or online providers beside
    batch-mode ones that nothing would ever be handed to."""
    findings: list[tuple[KeyPath, str]] = []
    online = any(provider.mode == "online" for provider in providers)
    batch = [provider for provider in providers if provider.mode == "batch"]
    if (
        online
        and batch
        and not any(
            p.batch_online_after_s is not None or p.batch_retries == "online" for p in batch
        )
    ):
        first = next(i for i, provider in enumerate(providers) if provider.mode == "online")
        findings.append(
            (
                ("providers", first, "mode"),
                "is online beside batch-mode providers, which hand it nothing: give a batch "
                'provider batch_online_after_s or batch_retries = "online", or leave it out',
            )
        )
    for index, provider in enumerate(providers):
        after = provider.batch_online_after_s
        if after is None or provider.mode != "batch":
            continue  # online (perhaps under this preset only): like every batch_* setting
        path: KeyPath = ("providers", index, "batch_online_after_s")
        deadline = provider.batch_deadline_s
        if not online and provider.batch_retries != "online":
            findings.append(
                (
                    path,
                    "has nowhere to send the remainder: add an online provider to the job "
                    'or set batch_retries = "online"',
                )
            )
        elif after >= (deadline or _WINDOW_S):
            below = "batch_deadline_s" if deadline else "the 24h completion window"
            findings.append(
                (path, f"must be below {below} ({after:g} >= {deadline or _WINDOW_S:g})")
            )
    return findings


def switch_refusal(
    modes: Mapping[str, ProviderMode],
    moved: Sequence[str],
    in_force: str,
    choice: str,
) -> str | None:
    """Why switching from preset `in_force` to `choice` mid-run is refused, or None.

    `modes` are the presets' modes (by name, for those that say one); `moved`
    the providers a preset's mode applies to.  A switch that would move one of
    them to the other route is refused: the route is chosen at start.
    """
    old, new = modes.get(in_force) or "online", modes.get(choice) or "online"
    if old == new or not moved:
        return None
    return (
        f"preset {choice!r} sends {', '.join(repr(name) for name in moved)} {new}, but this run "
        f"started {old} (preset {in_force!r}): the route is chosen at start; start the job "
        f"again with --preset {choice} to change it"
    )
