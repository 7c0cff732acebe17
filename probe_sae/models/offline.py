"""Fail fast, once, when pretrained weights are not cached and cannot be downloaded.

Without this check huggingface_hub retries each candidate file for about a minute before it
gives up. Before a download, the weight file is looked up in the local cache
(``huggingface_hub.try_to_load_from_cache``, open_clip's ``~/.cache/clip`` for URL weights);
if it is missing and ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set, or the download
host does not answer within `PROBE_TIMEOUT_S`, one error says what to download and where.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

#: seconds to wait for the download host before declaring the machine offline
PROBE_TIMEOUT_S = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: weight files open_clip / timm look for in a hub repo, safetensors first
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class OfflineError(RuntimeError):
    """Pretrained weights are not cached and this process cannot download them."""


def offline_variable() -> str | None:
    """The name of the set offline variable (``HF_HUB_OFFLINE=1`` ...), or ``None``."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def hub_cached(repo_id: str, filenames: tuple[str, ...], cache_dir: str | None = None) -> bool:
    """Whether one of ``filenames`` of hub repo ``repo_id`` is in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache_dir), str) for f in filenames
    )


def hub_cache_dir(cache_dir: str | None = None) -> str:
    """The directory huggingface_hub caches downloads in."""
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def unreachable(url: str) -> str | None:
    """Why ``url``'s host cannot be reached (offline variable, DNS, connect), or ``None``."""
    variable = offline_variable()
    if variable is not None:
        return f"{variable}={os.environ[variable]} is set"
    host = urlparse(url).hostname or url
    port = urlparse(url).port or 443
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as error:
        return f"{host} cannot be reached ({type(error).__name__}: {error})"


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
