"""Training checkpoints: safetensors + JSON, never pickled, written atomically.

A checkpoint is a folder ``step-0000123/`` inside the run's checkpoint directory, holding
``trainer.json`` and, per SAE, its saved folder, its optimizer state and its firing tracker.
It is assembled under a temporary name and renamed into place, then the ``latest`` file is
replaced atomically, so an interrupted write never corrupts the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from probe_sae.constants import CHECKPOINT_FORMAT as FORMAT
from probe_sae.constants import CHECKPOINT_FORMAT_VERSION as FORMAT_VERSION
from probe_sae.constants import (
    CHECKPOINT_STATE_NAME,
    OPTIMIZER_META_NAME,
    OPTIMIZER_TENSORS_NAME,
    TRACKER_NAME,
)

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def check_run_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"SAE run name {name!r} may only use letters, digits, '.', '_' and '-'")
    return name


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (for safetensors) and JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [
        {**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def write_checkpoint(
    root: Path,
    step: int,
    trainer_state: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically; ``runs[name]`` holds ``sae``, ``optimizer``, ``tracker``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    tmp = root / f".tmp-step-{step:09d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, run in runs.items():
        folder = tmp / name
        run["sae"].save_pretrained(folder / "sae")
        tensors, meta = optimizer_state(run["optimizer"])
        save_file(tensors, str(folder / OPTIMIZER_TENSORS_NAME))
        _write_json(folder / OPTIMIZER_META_NAME, meta)
        save_file(run["tracker"].state_dict(), str(folder / TRACKER_NAME))
    _write_json(
        tmp / CHECKPOINT_STATE_NAME, {"format": FORMAT, "format_version": FORMAT_VERSION, **trainer_state}
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (root / ".latest.tmp").write_text(final.name)
    os.replace(root / ".latest.tmp", root / "latest")
    older = sorted(p for p in root.glob("step-*") if p.name != final.name)
    for old in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from itself or from the run's checkpoint directory (via ``latest``)."""
    p = Path(path)
    if (p / CHECKPOINT_STATE_NAME).is_file():
        return p
    if (p / "latest").is_file():
        target = p / (p / "latest").read_text().strip()
        if (target / CHECKPOINT_STATE_NAME).is_file():
            return target
    raise FileNotFoundError(
        f"no checkpoint at {p}: pass a checkpoint directory (with a 'latest' file) or a step-* folder"
    )


def read_checkpoint(folder: Path) -> dict[str, Any]:
    state = json.loads((folder / CHECKPOINT_STATE_NAME).read_text())
    if state.get("format") != FORMAT or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder} is not a probe_sae checkpoint of format version {FORMAT_VERSION}"
        )
    return state


def read_run(folder: Path, name: str) -> dict[str, Any]:
    run = folder / name
    return {
        "sae_dir": run / "sae",
        "optimizer_tensors": load_file(str(run / OPTIMIZER_TENSORS_NAME)),
        "optimizer_meta": json.loads((run / OPTIMIZER_META_NAME).read_text()),
        "tracker": load_file(str(run / TRACKER_NAME)),
    }
