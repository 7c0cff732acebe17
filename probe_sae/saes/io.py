"""Saving and loading SAEs as a folder: ``config.json`` + ``model.safetensors``.

``config.json`` is the SAE's family config (``to_dict(sae.config)``: ``family``, ``n_concepts``,
``k``, ...) plus the format and its version, the layer's width, the normalisation and dtype
the weights were saved with, and where the activations came from (``provenance``).

Never pickled. Files are written to temporary names and moved into place, tensors first, so
an interrupted save leaves either the previous SAE or the new one, never a mixture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probe_sae._atomic import atomic_write
from probe_sae.config import to_dict
from probe_sae.constants import CONFIG_NAME, WEIGHTS_NAME, __version__
from probe_sae.constants import SAE_FORMAT as FORMAT
from probe_sae.constants import SAE_FORMAT_VERSION as FORMAT_VERSION
from probe_sae.saes.base import SAE
from probe_sae.saes.factory import sae_from_config


class SAEFormatError(ValueError):
    """A folder that is not a loadable SAE (missing, corrupted, or of another version)."""


#: the keys of ``config.json`` that are not fields of the family config
STATE_KEYS = (
    "format",
    "format_version",
    "probe_sae_version",
    "d_model",
    "normalization",
    "dtype",
    "provenance",
)


def sae_config(sae: SAE) -> dict[str, Any]:
    """The JSON config that :func:`load_sae` rebuilds ``sae`` from."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "probe_sae_version": __version__,
        **to_dict(sae.config),
        "d_model": sae.d_model,
        "normalization": sae.normalization,
        "dtype": str(sae.b_pre.dtype).removeprefix("torch."),
        "provenance": dict(sae.provenance),
    }


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write ``sae`` to the folder ``path`` (created if needed); returns the folder."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sae.state_dict().items()}
    atomic_write(
        folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    text = json.dumps(sae_config(sae), indent=2, sort_keys=True)
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text + "\n"))
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise SAEFormatError(
            f"{folder} is not a folder: pass the folder that save_pretrained wrote"
        )
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise SAEFormatError(f"{folder} holds no {CONFIG_NAME}: it is not a saved probe_sae SAE")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SAEFormatError(
            f"{cfg_path} is corrupted (not valid JSON: {err}); save the SAE again"
        ) from err
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise SAEFormatError(
            f"{cfg_path} is not a probe_sae SAE config (format is {cfg.get('format')!r} if a dict)"
        )
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        hint = (
            "upgrade probe_sae"
            if isinstance(version, int) and version > FORMAT_VERSION
            else "re-save it with this version"
        )
        raise SAEFormatError(
            f"{folder} was saved in SAE format version {version}, this probe_sae reads version "
            f"{FORMAT_VERSION}: {hint}"
        )
    return cfg


def load_sae(
    path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> SAE:
    """Load an SAE saved by ``save_pretrained`` (any family, free or archetypal dictionary)."""
    folder = Path(path)
    cfg = _read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise SAEFormatError(
            f"{folder} holds {CONFIG_NAME} but no {WEIGHTS_NAME}; save the SAE again"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEFormatError(
            f"{weights} is corrupted or truncated ({err}); save the SAE again"
        ) from err
    try:
        family_config = {k: v for k, v in cfg.items() if k not in STATE_KEYS}
        sae = sae_from_config(family_config, int(cfg["d_model"]))
    except (KeyError, TypeError, ValueError) as err:
        raise SAEFormatError(
            f"{folder / CONFIG_NAME} describes no SAE this version can build: {err}"
        ) from err
    saved_dtype = getattr(torch, cfg.get("dtype", "float32"), torch.float32)
    sae.to(saved_dtype)
    try:
        sae.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SAEFormatError(f"{weights} does not match its {CONFIG_NAME}: {err}") from err
    sae.normalization = cfg.get("normalization", "none")
    sae.provenance = dict(cfg.get("provenance") or {})
    sae.eval()
    if device is not None or dtype is not None:
        sae.to(device=device, dtype=dtype)
    return sae
