"""Saving and loading SAEs as a folder: ``config.json`` + ``model.safetensors``.

``config.json`` is the SAE's family config (``to_dict(sae.config)``: ``family``, ``n_concepts``,
``k``, ...) plus the format and its version, the layer's width, the normalisation and dtype
the weights were saved with, where the activations came from (``provenance``), and the
``save_id``: a SHA-256 of the config and the tensors, also stored in the weights' metadata.

Never pickled. The folder's two files are written as a whole
(:func:`probe_sae._atomic.atomic_write_files`): both are written completely under temporary
names, then renamed into place, the old ones kept until both renames succeeded, so a failed
save (disk full, no permission, an interrupt) leaves the previous SAE, intact, and no
temporary file. Other files in the folder (``training_log.json``, ...) are left as they are.
Should a folder ever hold the files of two different saves (a crash between the two renames,
a file copied in by hand), their ``save_id`` differ and :func:`load_sae` refuses it.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from probe_sae._atomic import atomic_write_files
from probe_sae.config import to_dict
from probe_sae.constants import CONFIG_NAME, WEIGHTS_NAME, __version__
from probe_sae.constants import SAE_FORMAT as FORMAT
from probe_sae.constants import SAE_FORMAT_VERSION as FORMAT_VERSION
from probe_sae.saes.base import SAE
from probe_sae.saes.factory import sae_from_config


class SAEFormatError(ValueError):
    """A folder that is not a loadable SAE (missing, corrupted, or of another version)."""


class SAESaveError(OSError):
    """An SAE could not be saved (the path is a file, no permission, the disk is full...).

    The message names the folder and the fix; any SAE already in the folder is unchanged and
    no temporary file is left. ``errno`` is the underlying error's.
    """


#: the keys of ``config.json`` that are not fields of the family config
STATE_KEYS = (
    "format",
    "format_version",
    "probe_sae_version",
    "d_model",
    "normalization",
    "dtype",
    "provenance",
    "save_id",
)
#: the dtypes an SAE may be saved in, by the name ``config.json`` gives them
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
#: the key of the save's identity, in ``config.json`` and in the weights' metadata
SAVE_ID = "save_id"


def sae_config(sae: SAE) -> dict[str, Any]:
    """The JSON config that :func:`load_sae` rebuilds ``sae`` from (without its ``save_id``)."""
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


def save_id(config: dict[str, Any], tensors: dict[str, Tensor]) -> str:
    """SHA-256 of a config and its tensors: the identity both files of one save record."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _write_weights(tensors: dict[str, Tensor], metadata: dict[str, str], path: str) -> None:
    save_file(tensors, path, metadata=metadata)


def _write_config(text: str, path: str) -> None:
    Path(path).write_text(text)


def _writers(sae: SAE) -> dict[str, Callable[[str], Any]]:
    """``{file name: writer}`` of the two files of ``sae``'s folder, weights first."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sae.state_dict().items()}
    config = sae_config(sae)
    config[SAVE_ID] = save_id(config, tensors)
    metadata = {"format": "pt", SAVE_ID: config[SAVE_ID]}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    return {
        WEIGHTS_NAME: lambda tmp: _write_weights(tensors, metadata, tmp),
        CONFIG_NAME: lambda tmp: _write_config(text, tmp),
    }


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write ``sae`` to the folder ``path`` (created if needed); returns the folder.

    Both files are replaced as a whole (see the module docstring). Raises
    :class:`SAESaveError` naming the fix when the folder cannot be written; the folder's
    previous SAE is then unchanged, and folders this call created are removed.
    """
    folder = Path(path)
    created: list[Path] = []
    try:
        created = _missing_folders(folder)
        _check_target(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_files(folder, _writers(sae))
    except BaseException as err:
        _remove_empty(created)
        if isinstance(err, OSError) and not isinstance(err, SAESaveError):
            raise _save_error(folder, err) from err
        raise
    return folder


def _missing_folders(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would create, deepest first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed save created (deepest first), if they are still empty."""
    for candidate in folders:
        try:
            candidate.rmdir()
        except OSError:
            return


def _check_target(folder: Path) -> None:
    """Refuse a path that is a file, and a folder whose ``config.json`` is not an SAE's."""
    if folder.exists() and not folder.is_dir():
        raise SAESaveError(
            errno.ENOTDIR,
            f"cannot save the SAE to {folder}: it is a file, and an SAE is saved as a folder "
            f"({CONFIG_NAME} + {WEIGHTS_NAME}); pass a folder path, or move the file away",
        )
    existing = folder / CONFIG_NAME
    if not existing.is_file():
        return
    try:
        cfg = json.loads(existing.read_text())
    except (ValueError, UnicodeDecodeError):
        return  # an unreadable config: nothing worth keeping
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise SAESaveError(
            errno.EEXIST,
            f"cannot save the SAE to {folder}: its {CONFIG_NAME} is not a probe_sae SAE's (a "
            "model's folder?) and would be overwritten; save the SAE into its own folder",
        )


def _save_error(folder: Path, err: OSError) -> SAESaveError:
    """``err`` (from writing into ``folder``) as an :class:`SAESaveError` that names the fix."""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "the disk is full: free some space, or save to another disk"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = (
            "no permission to write there (a read-only folder or disk): save to a writable "
            "folder, or make this one writable"
        )
    elif err.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "a file stands where a folder is needed: pass a folder path, or move the file away"
    else:
        fix = "check that the path is a writable folder on a working disk"
    message = (
        f"could not save the SAE to {folder}: {fix} ({err.strerror or err}); any SAE already "
        "saved there is unchanged"
    )
    return SAESaveError(message) if err.errno is None else SAESaveError(err.errno, message)


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
    except OSError as err:
        raise SAEFormatError(
            f"cannot read {cfg_path} ({err.strerror or err}): check its permissions"
        ) from err
    if not isinstance(cfg, dict):
        raise SAEFormatError(
            f"{cfg_path} holds a JSON {type(cfg).__name__}, not an SAE config object: it is not "
            "a probe_sae SAE config; save the SAE again with save_pretrained"
        )
    if cfg.get("format") != FORMAT:
        raise SAEFormatError(
            f"{cfg_path} is not a probe_sae SAE config (its format is {cfg.get('format')!r}, "
            f"expected {FORMAT!r}); pass the folder that save_pretrained wrote"
        )
    _check_version(folder, cfg.get("format_version"))
    _check_state(cfg_path, cfg)
    return cfg


def _check_version(folder: Path, version: Any) -> None:
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


def _check_state(cfg_path: Path, cfg: dict[str, Any]) -> None:
    """Check the config's own keys (width, dtype, normalisation, provenance, save id)."""
    d_model = cfg.get("d_model")
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
        problem = f"d_model is {d_model!r}, not a positive integer (the layer's width)"
    elif cfg.get("dtype", "float32") not in DTYPES:
        problem = f"dtype is {cfg.get('dtype')!r}, not one of {sorted(DTYPES)}"
    elif not isinstance(cfg.get("normalization", "none"), str):
        problem = f"normalization is {cfg.get('normalization')!r}, not a string"
    elif not isinstance(cfg.get("provenance") or {}, dict):
        problem = f"provenance is {cfg.get('provenance')!r}, not an object"
    elif not isinstance(cfg.get(SAVE_ID, ""), str):
        problem = f"{SAVE_ID} is {cfg.get(SAVE_ID)!r}, not a string"
    else:
        return
    raise SAEFormatError(f"{cfg_path} is invalid: {problem}; save the SAE again")


def _read_weights(folder: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors of ``model.safetensors`` and its metadata."""
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise SAEFormatError(
            f"{folder} holds {CONFIG_NAME} but no {WEIGHTS_NAME}; save the SAE again"
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = f.keys()
            return {k: f.get_tensor(k) for k in names}, dict(f.metadata() or {})
    except PermissionError as err:
        raise SAEFormatError(
            f"cannot read {weights} ({err.strerror or err}): check its permissions"
        ) from err
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SAEFormatError(
            f"{weights} is corrupted or truncated ({err}); save the SAE again"
        ) from err


def _check_same_save(folder: Path, cfg: dict[str, Any], metadata: dict[str, str]) -> None:
    """Refuse a folder whose config and weights come from two different saves."""
    if cfg.get(SAVE_ID) != metadata.get(SAVE_ID):
        raise SAEFormatError(
            f"{folder}: {CONFIG_NAME} and {WEIGHTS_NAME} come from different saves (their "
            f"{SAVE_ID} differ: an interrupted overwrite, or a file copied in from another "
            "SAE); save the SAE again, or put back both files of the same save"
        )


def _build(folder: Path, cfg: dict[str, Any], state: dict[str, Tensor]) -> SAE:
    """The SAE ``cfg`` describes, with the weights ``state``."""
    try:
        family_config = {k: v for k, v in cfg.items() if k not in STATE_KEYS}
        sae = sae_from_config(family_config, cfg["d_model"])
    except (KeyError, TypeError, ValueError) as err:
        raise SAEFormatError(
            f"{folder / CONFIG_NAME} describes no SAE this version can build: {err}"
        ) from err
    sae.to(DTYPES[cfg.get("dtype", "float32")])
    try:
        sae.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SAEFormatError(
            f"{folder / WEIGHTS_NAME} does not match its {CONFIG_NAME}: {err}"
        ) from err
    return sae


def load_sae(
    path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> SAE:
    """Load an SAE saved by ``save_pretrained`` (any family, free or archetypal dictionary).

    ``path`` is a folder, or an SAE on the Hugging Face Hub, ``"hf:org/repo"`` or
    ``"hf:org/repo/sub/folder"`` with an optional ``@revision``, read through the
    huggingface_hub cache (:func:`probe_sae.hub.download_sae`; offline, only the cache).

    Raises :class:`SAEFormatError` naming the file and the fix when the folder is not a
    complete, consistent SAE (missing or corrupted files, another format version, or a
    config and weights from two different saves).

    An SAELens folder (``cfg.json`` + ``sae_weights.safetensors``, no ``config.json``) is read
    as its probe_sae equivalent by :func:`probe_sae.saes.saelens.load_saelens`.
    """
    if isinstance(path, str) and path.startswith("hf:"):
        from probe_sae.hub import download_sae

        path = download_sae(path)
    folder = Path(path)
    from probe_sae.saes import saelens  # imports this module

    if saelens.is_saelens_folder(folder):
        return saelens.load_saelens(folder, device=device, dtype=dtype)
    cfg = _read_config(folder)
    state, metadata = _read_weights(folder)
    _check_same_save(folder, cfg, metadata)
    sae = _build(folder, cfg, state)
    sae.normalization = cfg.get("normalization", "none")
    sae.provenance = dict(cfg.get("provenance") or {})
    sae.eval()
    if device is not None or dtype is not None:
        sae.to(device=device, dtype=dtype)
    return sae
