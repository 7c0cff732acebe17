"""Where a run's SAEs train: one device for all, or one per SAE (a sweep of SAEs spread over
several GPUs, all fed by one forward pass of the model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from probe_sae.config import ConfigError

__all__ = ["place_saes", "run_device"]


def run_device(device: str | None, source: Any) -> torch.device | None:
    """The device a run's SAEs go to: ``device`` when given, else the live model's device (a
    :class:`~probe_sae.stream.ActivationStream`'s ``model.device``), else ``None`` (an SAE
    given already built stays where it is, one built from a config goes to the CPU)."""
    if device is not None:
        return torch.device(device)
    model = getattr(source, "model", None)
    found = getattr(model, "device", None)
    return torch.device(found) if found is not None else None


def place_saes(
    names: Sequence[str], device: torch.device | str | None, sae_devices: Sequence[str] = ()
) -> dict[str, torch.device | None]:
    """Each SAE's device by run name.

    ``sae_devices`` gives the i-th SAE the i-th device (a shorter list is cycled: 8 SAEs on
    ``("cuda:0", "cuda:1")`` alternate between the two); empty, every SAE goes to ``device``
    (``None``: where it already is, see :func:`run_device`).

    Example: ``place_saes(["a", "b", "c"], None, ["cuda:0", "cuda:1"])`` →
    ``{"a": cuda:0, "b": cuda:1, "c": cuda:0}``.
    """
    if len(sae_devices) > len(names):
        raise ConfigError(
            f"sae_devices names {len(sae_devices)} devices for {len(names)} SAEs "
            f"({', '.join(names)}): give at most one device per SAE"
        )
    if not sae_devices:
        where = None if device is None else torch.device(device)
        return dict.fromkeys(names, where)
    placed: dict[str, torch.device | None] = {}
    for i, name in enumerate(names):
        text = sae_devices[i % len(sae_devices)]
        try:
            placed[name] = torch.device(text)
        except RuntimeError as err:
            raise ConfigError(
                f"sae_devices: {text!r} is not a device ({err}); write cpu, cuda or cuda:N"
            ) from None
    return placed
