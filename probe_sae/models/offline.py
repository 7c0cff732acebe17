"""Fail fast, once, when pretrained weights are not cached and cannot be downloaded.

Without this check huggingface_hub retries each candidate file for about a minute before it
gives up. Before a download, the weight file is looked up in the local cache
(``huggingface_hub.try_to_load_from_cache``, open_clip's ``~/.cache/clip`` for URL weights);
if it is missing and ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set, or the download
host does not answer within `PROBE_TIMEOUT_S`, one error says what to download and where.

Hub repos named in full (``hf:org/name``, ``open_clip:hf-hub:org/name``) are resolved to a
folder of the huggingface_hub cache first (`transformers_snapshot`, `open_clip_snapshot`, over
`probe_sae.hub.snapshot`, the same resolution as ``load_sae("hf:...")``), and loaded from that
folder: offline, nothing but the cache is read. The generic helpers (`OfflineError`,
`unreachable`, `hub_cached`, ...) live in :mod:`probe_sae.hub` and are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from probe_sae.hub import OFFLINE_VARIABLES as OFFLINE_VARIABLES
from probe_sae.hub import PROBE_TIMEOUT_S as PROBE_TIMEOUT_S
from probe_sae.hub import OfflineError as OfflineError
from probe_sae.hub import hub_cache_dir as hub_cache_dir
from probe_sae.hub import hub_cached as hub_cached
from probe_sae.hub import offline_variable as offline_variable
from probe_sae.hub import snapshot, unreachable

#: weight files open_clip / timm look for in a hub repo, safetensors first
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: what ``load_model("hf:org/name")`` fetches of a transformers repo: its top-level configs,
#: processor and tokenizer files, and its weights, safetensors (one file or shards) when the
#: repo has them, else PyTorch pickles (``.bin``, loaded by transformers, not by probe_sae)
TRANSFORMERS_FILES = ("*.json", "*.txt", "*.model", "model.safetensors", "model-*.safetensors")
TRANSFORMERS_BIN_FILES = ("pytorch_model.bin", "pytorch_model-*.bin")
TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: what ``load_model("open_clip:hf-hub:org/name")`` fetches: open_clip's config, its weights
#: (safetensors when the repo has them) and the tokenizer files beside them
OPEN_CLIP_FILES = ("*.json", "*.txt", "*.model", "open_clip_model.safetensors")
OPEN_CLIP_BIN_FILES = ("open_clip_pytorch_model.bin",)


def _hub_url() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def ensure_open_clip_tag(name: str, tag: str, cache_dir: str | None = None) -> None:
    """Raise `OfflineError` if open_clip's weights for ``name/tag`` are neither cached nor
    downloadable; return at once when they are cached or the host answers."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        files = (filename,) if filename else HUB_WEIGHT_FILES
        if filename.endswith((".bin", ".pth")):
            files = (filename[:-4] + ".safetensors", filename)
        if hub_cached(repo_id, files, cache_dir):
            return
        where, url = f"{hub_cache_dir(cache_dir)} (hub repo {repo_id}, file {files[-1]})", _hub_url()
        fetch = f"`hf download {repo_id} {files[-1]}`"
    elif cfg.get("url"):
        url = cfg["url"]
        folder = cache_dir or os.path.expanduser("~/.cache/clip")
        if os.path.isfile(os.path.join(folder, os.path.basename(urlparse(url).path))):
            return
        where, fetch = folder, f"`wget -P {folder} {url}`"
    else:
        return
    reason = unreachable(url)
    if reason is not None:
        raise OfflineError(
            f"open_clip:{name}/{tag} needs pretrained weights that are not in the local cache "
            f"{where}, and {reason}. On a machine with internet run {fetch} and copy the cache "
            f"here (HF_HOME / HF_HUB_CACHE say where it lives), or load a local file with "
            f"'open_clip:{name}@/path/to/weights.bin'."
        )


def ensure_timm_weights(name: str) -> None:
    """Raise `OfflineError` if timm's hub weights for ``name`` are neither cached nor
    downloadable (weights fetched from a plain URL are left to timm)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo_id or getattr(cfg, "file", None):
        return
    filename = getattr(cfg, "hf_hub_filename", None)
    files = (filename,) if filename else TIMM_WEIGHT_FILES
    if hub_cached(repo_id, files):
        return
    reason = unreachable(_hub_url())
    if reason is not None:
        raise OfflineError(
            f"timm:{name} with pretrained=True needs weights that are not in the local cache "
            f"{hub_cache_dir()} (hub repo {repo_id}), and {reason}. On a machine with internet "
            f"run `hf download {repo_id}` and copy the cache here, or load a local file with "
            f"'timm:{name}@/path/to/model.safetensors'."
        )


def hub_repo(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``name`` (``org/name[@revision]``) names a Hub repo rather
    than a local folder, else ``None``."""
    if os.path.exists(name):
        return None
    repo_id, _, revision = name.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or repo_id.startswith((".", "~")):
        return None
    return repo_id, revision or None


def _model_snapshot(
    name: str,
    repo_id: str,
    files: tuple[str, ...],
    bin_files: tuple[str, ...],
    config: tuple[str, ...],
    weights: tuple[str, ...],
    fix: str,
    **options: Any,
) -> Path:
    """The snapshot of a model repo: its top-level ``files`` and, when the repo has no such
    weights (an older repo), its ``bin_files``; it must hold ``config`` and ``weights``."""
    common = dict(name=name, ignore_patterns=["*/*"], fix=fix, **options)
    folder = snapshot(repo_id, allow_patterns=files, required=[config], **common)
    if any((folder / w).is_file() for w in weights):
        return folder
    return snapshot(
        repo_id, allow_patterns=[*files, *bin_files], required=[config, weights], **common
    )


def transformers_snapshot(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Path | None:
    """The local folder of transformers model ``name`` (``org/name[@revision]``) in the
    huggingface_hub cache, downloaded when missing and the Hub can be reached (see
    `probe_sae.hub.snapshot`); ``None`` when ``name`` is a local folder, not a repo id."""
    repo = hub_repo(name)
    if repo is None:
        return None
    return _model_snapshot(
        f"hf:{name}",
        repo[0],
        TRANSFORMERS_FILES,
        TRANSFORMERS_BIN_FILES,
        ("config.json",),
        TRANSFORMERS_WEIGHTS,
        "or give a directory written by save_pretrained as 'hf:/path/to/dir'",
        revision=repo[1] or revision,
        cache_dir=cache_dir,
        token=token,
    )


def open_clip_snapshot(
    repo_id: str, *, cache_dir: str | Path | None = None, token: str | bool | None = None
) -> Path:
    """The local folder of open_clip hub model ``repo_id`` (``hf-hub:<repo_id>``) in the
    huggingface_hub cache, downloaded when missing and the Hub can be reached."""
    return _model_snapshot(
        f"open_clip:hf-hub:{repo_id}",
        repo_id,
        OPEN_CLIP_FILES,
        OPEN_CLIP_BIN_FILES,
        ("open_clip_config.json",),
        ("open_clip_model.safetensors", *OPEN_CLIP_BIN_FILES),
        "or load a local copy with 'open_clip:local-dir:/path/to/folder'",
        cache_dir=cache_dir,
        token=token,
    )
