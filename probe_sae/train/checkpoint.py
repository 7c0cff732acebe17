"""Training checkpoints: safetensors + JSON, never pickled, written atomically, verified on resume.

A checkpoint is a folder ``step-000000123/`` inside the run's checkpoint directory, holding
``trainer.json`` and, per SAE, its saved folder, its optimizer state and its firing tracker.
``trainer.json`` records the step, the source's position, the metrics log, the resolved run
configuration (``run``: the TrainConfig, each SAE's layer and config, the source's description),
the sha256 and size of every other file of the checkpoint (``files``) and, in ``sha256``, the
checksum of its own content. A checkpoint is assembled under a temporary name (``.tmp-step-*``)
and renamed into place, then the ``latest`` file is replaced atomically, so an interrupted write
never damages the previous checkpoint; leftover temporary folders are removed by the next write
and by a resume.

:func:`open_checkpoint` verifies the newest checkpoint of a run and falls back to the newest
intact one with a :class:`CheckpointWarning` that names the damage; :func:`check_run_config`
refuses a resume whose settings differ from the checkpoint's, listing the differing fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from probe_sae.config import to_dict
from probe_sae.constants import CHECKPOINT_FORMAT as FORMAT
from probe_sae.constants import CHECKPOINT_FORMAT_VERSION as FORMAT_VERSION
from probe_sae.constants import (
    CHECKPOINT_STATE_NAME,
    OPTIMIZER_META_NAME,
    OPTIMIZER_TENSORS_NAME,
    TRACKER_NAME,
)

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_STEP = re.compile(r"^step-(\d{9})$")
_TMP_PREFIX = ".tmp-step-"
LATEST = "latest"
#: what a checkpoint directory holds besides step folders before its first checkpoint completes
_ARTEFACTS = (LATEST, ".latest.tmp")
#: run-config fields a resume may always change: they do not alter what is trained
ALWAYS_ALLOWED = (
    "train.progress",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.checkpoint_dir",
    "train.summary_tokens",
    "train.device",
    "train.sae_devices",
    "train.compile",
    "train.prefetch",
    "train.collective_timeout",
    "source.config.num_workers",
)
_ABSENT = "(absent)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: missing, damaged, or made with other settings."""


class CheckpointWarning(UserWarning):
    """A resume that skipped damaged checkpoints or found none to continue from."""


class _Damage(Exception):
    """What is wrong with one checkpoint (a file and the check it failed)."""


def check_run_name(name: str) -> str:
    """``name`` if it can name an SAE's folder in a checkpoint."""
    if not _NAME.match(name):
        raise ValueError(f"SAE run name {name!r} may only use letters, digits, '.', '_' and '-'")
    return name


# ------------------------------------------------------------------------------ optimizer
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
    """Load the state :func:`optimizer_state` split into ``opt``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [
        {**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})


# --------------------------------------------------------------------------------- writing
def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_checksum(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _step_of(folder: Path) -> int | None:
    match = _STEP.match(folder.name)
    return int(match.group(1)) if match else None


def step_folders(root: Path) -> list[Path]:
    """The ``step-*`` folders of a checkpoint directory, newest first."""
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None]
    return sorted(found, key=lambda p: _step_of(p) or 0, reverse=True)


def remove_stale(root: Path) -> None:
    """Remove what an interrupted write left in a checkpoint directory (``.tmp-step-*``)."""
    for tmp in root.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)
    (root / ".latest.tmp").unlink(missing_ok=True)


def _write_run(folder: Path, run: dict[str, Any]) -> None:
    run["sae"].save_pretrained(folder / "sae")
    tensors, meta = optimizer_state(run["optimizer"])
    save_file(tensors, str(folder / OPTIMIZER_TENSORS_NAME))
    _write_json(folder / OPTIMIZER_META_NAME, meta)
    save_file(run["tracker"].state_dict(), str(folder / TRACKER_NAME))


def _file_checksums(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_checkpoint(
    root: Path,
    step: int,
    trainer_state: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically; ``runs[name]`` holds ``sae``, ``optimizer``,
    ``tracker``. Keeps the newest ``keep`` checkpoints up to ``step`` and removes those of later
    steps (left by a run that was resumed from an earlier checkpoint)."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    final, tmp = root / f"step-{step:09d}", root / f"{_TMP_PREFIX}{step:09d}"
    tmp.mkdir()
    for name, run in runs.items():
        _write_run(tmp / name, run)
    head = {"format": FORMAT, "format_version": FORMAT_VERSION}
    state = json.loads(json.dumps({**head, **trainer_state, "files": _file_checksums(tmp)}))
    state["sha256"] = _json_checksum(state)
    _write_json(tmp / CHECKPOINT_STATE_NAME, state)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (root / ".latest.tmp").write_text(final.name)
    os.replace(root / ".latest.tmp", root / LATEST)
    _prune(root, step, keep)
    return final


def _prune(root: Path, step: int, keep: int) -> None:
    folders = step_folders(root)
    later = [p for p in folders if (_step_of(p) or 0) > step]
    earlier = [p for p in folders if (_step_of(p) or 0) < step]
    for old in [*later, *earlier[max(keep - 1, 0) :]]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------- reading
def _read_state(folder: Path) -> dict[str, Any]:
    path = folder / CHECKPOINT_STATE_NAME
    if not path.is_file():
        raise _Damage(f"{CHECKPOINT_STATE_NAME} is missing")
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise _Damage(f"{CHECKPOINT_STATE_NAME} is not valid JSON ({err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _Damage(f"{CHECKPOINT_STATE_NAME} is not a probe_sae checkpoint state")
    if state.get("format_version") != FORMAT_VERSION:
        raise _Damage(
            f"it has checkpoint format version {state.get('format_version')}, this probe_sae "
            f"reads version {FORMAT_VERSION}"
        )
    if "sha256" not in state or "files" not in state:
        raise _Damage(
            "it was written by an older probe_sae without checksums and run settings, so it "
            "cannot be verified (finish the run with the version that started it)"
        )
    return state


def _verify(folder: Path) -> dict[str, Any]:
    """The state of an intact checkpoint; raises ``_Damage`` naming the file and the check."""
    state = _read_state(folder)
    expected = state.pop("sha256")
    if _json_checksum(state) != expected:
        raise _Damage(f"{CHECKPOINT_STATE_NAME} fails its sha256 checksum (changed or damaged)")
    for rel, meta in state["files"].items():
        path = folder / rel
        if not path.is_file():
            raise _Damage(f"{rel} is missing")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise _Damage(f"{rel} has {size:,} bytes, {meta['bytes']:,} were written (truncated?)")
        if sha256_file(path) != meta["sha256"]:
            raise _Damage(f"{rel} fails its sha256 checksum (its bytes changed after writing)")
    return state


def verify_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The state (``trainer.json``) of the checkpoint ``folder`` after checking every file
    against its recorded checksum; a damaged one raises :class:`CheckpointError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"no checkpoint at {folder}: pass the run's checkpoint directory "
            "(TrainConfig.checkpoint_dir) or one of its step-* folders"
        )
    try:
        return _verify(folder)
    except _Damage as damage:
        raise CheckpointError(
            f"checkpoint {folder} is damaged: {damage}. Resume from the run's checkpoint "
            f"directory ({folder.parent}) to fall back to its newest intact checkpoint"
        ) from None


def open_checkpoint(
    path: str | Path, *, new_run_ok: bool = False
) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint of ``path`` and its state, or ``None`` to start afresh.

    ``path`` is a step folder (used as it is) or a run's checkpoint directory: its checkpoints
    are verified newest first and the first intact one is used, with a
    :class:`CheckpointWarning` naming each damaged one (file and failed check). A directory
    with no complete checkpoint (only what an interrupted first write left, which is removed)
    gives ``None`` with a warning; so does a missing ``path`` when ``new_run_ok`` (it is the
    folder this run writes its checkpoints to).
    """
    p = Path(path)
    if _step_of(p) is not None or (p / CHECKPOINT_STATE_NAME).is_file():
        return p, verify_checkpoint(p)
    if not p.is_dir():
        if new_run_ok:
            _warn_fresh(p, "does not exist yet")
            return None
        raise CheckpointError(
            f"no checkpoint folder at {p}: pass the run's checkpoint directory "
            "(TrainConfig.checkpoint_dir) or one of its step-* folders"
        )
    remove_stale(p)
    folders = step_folders(p)
    damaged = _missing_latest(p, folders)
    for folder in folders:
        try:
            state = _verify(folder)
        except _Damage as damage:
            damaged.append(f"{folder.name}: {damage}")
            continue
        if damaged:
            warnings.warn(
                f"damaged checkpoint(s) in {p} skipped ({'; '.join(damaged)}); resuming from "
                f"{folder.name}, the newest intact one (the damaged ones are replaced as the run "
                "goes on)",
                CheckpointWarning,
                stacklevel=3,
            )
        return folder, state
    if folders or damaged:
        raise CheckpointError(
            f"no intact checkpoint in {p}: {'; '.join(damaged)}. Resume from a copy of the run's "
            f"checkpoints, or start the run again without resume= (after removing {p})"
        )
    if new_run_ok or all(child.name in _ARTEFACTS for child in p.iterdir()):
        _warn_fresh(p, "holds no complete checkpoint (the run stopped before writing its first)")
        return None
    nested = [q for q in p.glob("*/step-*") if _step_of(q) is not None]
    hint = f" (did you mean {nested[0].parent}?)" if nested else ""
    raise CheckpointError(
        f"no checkpoint in {p}: it holds no step-* folder{hint}. Pass the run's checkpoint "
        "directory (TrainConfig.checkpoint_dir) or one of its step-* folders"
    )


def _missing_latest(root: Path, folders: list[Path]) -> list[str]:
    latest = root / LATEST
    if not latest.is_file():
        return []
    named = latest.read_text().strip()
    if any(folder.name == named for folder in folders):
        return []
    return [f"{named} (named by '{LATEST}') is missing"]


def _warn_fresh(path: Path, why: str) -> None:
    warnings.warn(
        f"resume={str(path)!r} {why}: starting the run from the beginning",
        CheckpointWarning,
        stacklevel=4,
    )


def check_world_size(folder: Path, state: dict[str, Any], world_size: int) -> None:
    """Refuse to resume a checkpoint written by another number of ranks."""
    saved = int(state.get("world_size", 1))
    if saved != world_size:
        raise CheckpointError(
            f"checkpoint {folder} was written by a run of {saved} rank(s), this run has "
            f"{world_size}: each rank's position in its part of the images is saved, so resume "
            f"with the same number of ranks (torchrun --nproc_per_node / --nnodes giving "
            f"{saved} processes{'' if saved > 1 else ', or no torchrun'})"
        )


def read_run(folder: Path, name: str) -> dict[str, Any]:
    """The saved SAE folder, optimizer state and tracker state of SAE ``name``."""
    run = folder / name
    return {
        "sae_dir": run / "sae",
        "optimizer_tensors": load_file(str(run / OPTIMIZER_TENSORS_NAME)),
        "optimizer_meta": json.loads((run / OPTIMIZER_META_NAME).read_text()),
        "tracker": load_file(str(run / TRACKER_NAME)),
    }


# ------------------------------------------------------------------------- run settings
def describe_source(source: Any) -> dict[str, Any]:
    """What identifies a token source's data, as recorded in a checkpoint's run settings.

    Every source: ``batch_size``, the layer ``widths`` and its ``seed`` (from ``state_dict``).
    A source with a ``config`` dataclass (an ActivationStream) adds that config; one with a
    ``model`` and ``describe`` adds the model's spec and name and each layer's resolved name,
    and ``images``, the number of images of its image source.
    """
    out: dict[str, Any] = {"batch_size": int(source.batch_size), "widths": source.widths()}
    state = source.state_dict()
    if "seed" in state:
        out["seed"] = state["seed"]
    config = getattr(source, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        out["config"] = to_dict(config)
    model, describe = getattr(source, "model", None), getattr(source, "describe", None)
    if model is not None and describe is not None:
        out["model"] = getattr(model, "spec", None)
        out["model_name"] = getattr(model, "name", None)
        out["layers"] = {key: describe(key).get("layer") for key in source.widths()}
        out["images"] = getattr(getattr(source, "source", None), "length", None)
    return json.loads(json.dumps(out))


def config_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted path, old, new)`` for every leaf that differs between two JSON trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in [*old, *(k for k in new if k not in old)]:
            out += config_changes(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _matches(path: str, names: Iterable[str]) -> bool:
    return any(path == name or path.endswith("." + name) for name in names)


def _short(value: Any) -> str:
    text = value if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_run_config(
    folder: Path, saved: dict[str, Any], current: dict[str, Any], allow: Iterable[str] = ()
) -> list[tuple[str, Any, Any]]:
    """The changes between a checkpoint's run settings and this run's that ``allow`` (dotted
    paths or field names, which match that field everywhere) or :data:`ALWAYS_ALLOWED` permit;
    any other change raises :class:`CheckpointError` listing every differing field."""
    changes = [  # a setting newer than the checkpoint, at its default "off", changes nothing
        c
        for c in config_changes(saved, json.loads(json.dumps(current)))
        if not (c[1] is _ABSENT and c[2] is None)
    ]
    allowed = [*ALWAYS_ALLOWED, *allow]
    refused = [c for c in changes if not _matches(c[0], allowed)]
    if refused:
        lines = "\n".join(f"  {path}: {_short(a)} → {_short(b)}" for path, a, b in refused)
        names = ", ".join(f'"{path}"' for path, _, _ in refused)
        raise CheckpointError(
            f"checkpoint {folder} was made with other settings than this run:\n{lines}\n"
            "Resume with the settings of the interrupted run, or pass "
            f"allow_changes=({names},) to continue with the new values"
        )
    return changes
