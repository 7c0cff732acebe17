"""The Hugging Face Hub: SAEs and model weights read through huggingface_hub's cache, fast
failure when they are not cached and cannot be downloaded, and SAEs shared with a model card.

An SAE on the Hub is named ``"hf:org/repo"`` (the SAE at the repo's root) or
``"hf:org/repo/sub/folder"`` (the SAE in that folder), either followed by ``@revision`` (a
branch, tag or commit). :func:`download_sae` resolves the name to a folder of the local cache,
``<cache>/models--org--repo/snapshots/<commit>/sub/folder``, downloading that folder's own
files (not its subfolders) on first use; ``load_sae("hf:...")`` then reads the folder like any
saved SAE. The cache is huggingface_hub's: ``HF_HUB_CACHE`` (default ``$HF_HOME/hub``,
``~/.cache/huggingface/hub``) or ``cache_dir=``.

Offline, fail fast: when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set, or the Hub does
not answer within `PROBE_TIMEOUT_S`, only the cache is read, and anything missing from it
raises one `OfflineError` naming the repo, the files and the command that fetches them on a
connected machine (without this check huggingface_hub retries for about a minute).

:func:`push_sae` (``SAE.push_to_hub``) saves an SAE in probe_sae's format with a generated
model card (:func:`model_card`: YAML metadata, a table of what the SAE is and how well it
reconstructs, a usage snippet) and uploads it with ``HfApi.create_repo`` + ``upload_folder``.

A leaf: it imports nothing from the package; huggingface_hub is imported on first use.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from probe_sae.constants import CONFIG_NAME, SAELENS_CONFIG_NAME, TRAINING_LOG

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

__all__ = [
    "OFFLINE_VARIABLES",
    "PROBE_TIMEOUT_S",
    "HubSAE",
    "HubSpec",
    "OfflineError",
    "download_sae",
    "hub_cache_dir",
    "hub_cached",
    "model_card",
    "offline_variable",
    "parse_hub_spec",
    "push_sae",
    "snapshot",
    "unreachable",
]

#: the prefix of a Hub name, for SAEs (``load_sae``) and models (``load_model``)
HUB_PREFIX = "hf:"
#: seconds to wait for the download host before declaring the machine offline
PROBE_TIMEOUT_S = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: with one of these set the connection goes through a proxy, which the probe cannot see
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
LIBRARY_NAME = "probe_sae"
#: the tags of every card; the family and the model are added
CARD_TAGS = ("sparse-autoencoder", "interpretability", "probe_sae")
#: the model card
CARD_NAME = "README.md"
_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


class OfflineError(RuntimeError):
    """Files are not in the local Hugging Face cache and this process cannot download them."""


# ---------------------------------------------------------------------------------- offline


def offline_variable() -> str | None:
    """The name of the set offline variable (``HF_HUB_OFFLINE=1`` ...), or ``None``."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


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


def hub_cache_dir(cache_dir: str | Path | None = None) -> str:
    """The directory huggingface_hub caches downloads in (``cache_dir`` when given)."""
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def hub_cached(
    repo_id: str, filenames: tuple[str, ...], cache_dir: str | Path | None = None
) -> bool:
    """Whether one of ``filenames`` of hub repo ``repo_id`` is in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache_dir), str) for f in filenames
    )


def _no_download(endpoint: str) -> str | None:
    """Why nothing can be downloaded from ``endpoint`` now, or ``None`` when it may be tried."""
    from huggingface_hub import constants

    variable = offline_variable()
    if variable is not None:
        return f"{variable}={os.environ[variable]} is set"
    if constants.HF_HUB_OFFLINE:
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)"
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None  # a proxy may reach the Hub where a direct connection cannot
    return unreachable(endpoint)


# ------------------------------------------------------------------------------- snapshots


def _fetch_command(
    repo_id: str,
    revision: str | None,
    include: Sequence[str],
    cache_dir: str | Path | None,
) -> str:
    """The ``hf download`` command that puts these files of ``repo_id`` into the cache."""
    parts = ["hf download", repo_id, *(f'--include "{p}"' for p in include)]
    if revision:
        parts.append(f"--revision {revision}")
    if cache_dir:
        parts.append(f"--cache-dir {cache_dir}")
    return " ".join(parts)


def _has(folder: Path, names: Sequence[str]) -> bool:
    return any((folder / name).is_file() for name in names)


def snapshot(
    repo_id: str,
    *,
    name: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    required: Sequence[Sequence[str]] = (),
    fix: str = "",
) -> Path:
    """The local snapshot folder of hub repo ``repo_id`` at ``revision`` (default ``main``),
    holding the files ``allow_patterns`` / ``ignore_patterns`` select (fnmatch patterns, as
    ``huggingface_hub.snapshot_download`` takes them), downloaded first when the Hub can be
    reached, else read from the cache alone.

    Args:
        name: what is being loaded, for messages (``"hf:org/repo"``).
        required: groups of file paths (relative to the snapshot); the snapshot must hold one
            file of each group, else the error says which are missing.
        fix: a last sentence for the error, e.g. how to load a local copy instead.

    Raises:
        OfflineError: the files are not cached, and the Hub cannot be reached or downloads are
            turned off (``HF_HUB_OFFLINE=1``): the message names the repo, the files, the
            cache and the ``hf download`` command that fetches them on a connected machine.
        FileNotFoundError: the Hub was reached but the repo holds no such files.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    reason = _no_download(constants.ENDPOINT)
    include = list(allow_patterns or ["*"])
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
                ignore_patterns=list(ignore_patterns) if ignore_patterns is not None else None,
                local_files_only=reason is not None,
            )
        )
    except LocalEntryNotFoundError as err:  # not cached (or only in part) and no download
        why = reason or f"the Hub could not be reached ({type(err).__name__})"
        raise _offline_error(name, repo_id, revision, include, cache_dir, why, fix) from err
    missing = [group for group in required if not _has(folder, group)]
    if not missing:
        return folder
    wanted = ", ".join(" or ".join(group) for group in missing)
    if reason is not None:
        why = f"{reason} (the cached snapshot {folder} lacks {wanted})"
        raise _offline_error(name, repo_id, revision, include, cache_dir, why, fix)
    raise FileNotFoundError(
        f"{name}: hub repo {repo_id} (revision {revision or 'main'}) holds no {wanted}; check "
        f"the name against https://huggingface.co/{repo_id}/tree/{revision or 'main'}"
        + (f". {fix}" if fix else "")
    )


def _offline_error(
    name: str,
    repo_id: str,
    revision: str | None,
    include: Sequence[str],
    cache_dir: str | Path | None,
    reason: str,
    fix: str,
) -> OfflineError:
    files = ", ".join(include)
    command = _fetch_command(repo_id, revision, include, cache_dir)
    return OfflineError(
        f"{name} is not in the local Hugging Face cache {hub_cache_dir(cache_dir)} (hub repo "
        f"{repo_id}, revision {revision or 'main'}, files {files}), and {reason}. On a machine "
        f"with internet run `{command}` and copy the cache folder here (HF_HUB_CACHE, or "
        f"HF_HOME/hub, says where this process looks; or pass cache_dir=)"
        + (f"; {fix}" if fix else "")
        + "."
    )


# ------------------------------------------------------------------------------------ SAEs


@dataclass(frozen=True)
class HubSpec:
    """An SAE on the Hub: ``hf:<repo_id>[/<subfolder>][@<revision>]``."""

    repo_id: str
    subfolder: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        sub = f"/{self.subfolder}" if self.subfolder else ""
        revision = f"@{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{self.repo_id}{sub}{revision}"


def parse_hub_spec(spec: str) -> HubSpec:
    """Read ``"hf:org/repo[/sub/folder][@revision]"``; raises ``ValueError`` saying what is
    wrong (the repo id is always the first two parts, ``org/repo``)."""
    example = "'hf:org/repo', 'hf:org/repo/sub/folder' or 'hf:org/repo/sub/folder@v1.0'"
    if not isinstance(spec, str) or not spec.startswith(HUB_PREFIX):
        raise ValueError(f"a Hub SAE is named like {example}, got {spec!r}")
    path, at, revision = spec[len(HUB_PREFIX) :].partition("@")
    parts = path.rstrip("/").split("/")  # a leading '/' (a local path?) is no repo id
    if len(parts) < 2 or not all(_REPO_PART.match(p) for p in parts[:2]):
        raise ValueError(
            f"{spec!r} does not start with a Hub repo id (org/repo: letters, digits, '-', '_', "
            f"'.'); name the SAE like {example}"
        )
    subfolder = "/".join(parts[2:])
    if any(p in ("", ".", "..") for p in parts[2:]):
        raise ValueError(f"{spec!r} has an empty, '.' or '..' folder; name it like {example}")
    if at and not revision:
        raise ValueError(f"{spec!r} ends with '@' but no revision; e.g. {example}")
    return HubSpec("/".join(parts[:2]), subfolder, revision or None)


def download_sae(
    spec: str, *, cache_dir: str | Path | None = None, token: str | bool | None = None
) -> Path:
    """The local folder of the SAE ``"hf:org/repo[/sub/folder][@revision]"``, downloaded into
    the huggingface_hub cache on first use (only that folder's own files).

    ``load_sae("hf:...")`` calls it; call it yourself for a ``cache_dir`` other than
    ``HF_HUB_CACHE``, then ``load_sae(folder)``. Raises `OfflineError` (see :func:`snapshot`)
    when the files are neither cached nor downloadable.
    """
    parsed = parse_hub_spec(spec)
    prefix = f"{parsed.subfolder}/" if parsed.subfolder else ""
    snap = snapshot(
        parsed.repo_id,
        name=str(parsed),
        revision=parsed.revision,
        cache_dir=cache_dir,
        token=token,
        allow_patterns=[f"{prefix}*"],
        ignore_patterns=[f"{prefix}*/*"],  # the SAE's own files, not the folders below it
        # probe_sae's format or SAELens's
        required=[(f"{prefix}{CONFIG_NAME}", f"{prefix}{SAELENS_CONFIG_NAME}")],
        fix="or download the folder yourself and pass its path to load_sae",
    )
    return snap / parsed.subfolder if parsed.subfolder else snap


# ------------------------------------------------------------------------------ model card


class HubSAE(Protocol):
    """What :func:`model_card` and :func:`push_sae` read of an SAE (any ``probe_sae.SAE``)."""

    family: str
    d_model: int
    n_concepts: int
    config: Any
    normalization: str
    provenance: dict[str, Any]

    @property
    def label(self) -> str: ...

    def save_pretrained(self, path: str | Path) -> Path: ...


def _figure(source: Any, key: str) -> Any:
    """``source[key]`` or ``source.key``; ``None`` when absent."""
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def _log_rows(training_log: Any) -> list[Mapping[str, Any]]:
    """Metrics rows from a list, or a ``training_log.json`` file or the SAE folder holding it."""
    if training_log is None:
        return []
    if isinstance(training_log, (str, Path)):
        path = Path(training_log)
        if path.is_dir():
            path = path / TRAINING_LOG
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot read the training log {path} ({err}); pass the {TRAINING_LOG} that "
                "TrainResult.save wrote, its folder, or TrainResult.metrics"
            ) from err
    else:
        rows = training_log
    rows = [row for row in rows if isinstance(row, Mapping)]
    names = sorted({str(row["name"]) for row in rows if "name" in row})
    if len(names) > 1:
        raise ValueError(
            f"the training log holds the rows of several SAEs ({', '.join(names)}); pass this "
            f"SAE's alone, e.g. [r for r in result.metrics if r['name'] == {names[0]!r}], or "
            f"its folder (TrainResult.save writes one {TRAINING_LOG} per SAE)"
        )
    return rows


def _local_path(spec: str) -> bool:
    """Whether a model spec names a file or folder of this machine (not worth publishing)."""
    rest = spec.partition(":")[2]
    return "@" in rest or rest.startswith(("/", ".", "~", "local-dir:")) or os.path.isabs(rest)


def _hub_model(spec: str | None) -> str | None:
    """The Hub repo of a model spec loaded from the Hub (``hf:org/name``,
    ``open_clip:hf-hub:org/name``), else ``None``."""
    if not spec or _local_path(spec):
        return None
    for prefix in (HUB_PREFIX, "open_clip:hf-hub:"):
        if spec.startswith(prefix):
            repo = spec[len(prefix) :]
            parts = repo.split("/")
            if len(parts) == 2 and all(_REPO_PART.match(p) for p in parts):
                return repo
    return None


def _card_facts(
    sae: HubSAE, metrics: Any, training_log: Any
) -> tuple[list[tuple[str, str]], str, dict[str, Any]]:
    """Table rows, a note on where the figures come from, and the provenance."""
    provenance = dict(sae.provenance or {})
    config = sae.config
    rows: list[tuple[str, str]] = [("family", sae.label)]
    k = getattr(config, "k", None)
    if k is not None:
        rows.append(("k (matching-pursuit steps)" if sae.family == "mp" else "k", str(k)))
    rows.append(("n_concepts × d_model", f"{sae.n_concepts} × {sae.d_model}"))
    model = provenance.get("model") or provenance.get("model_name")
    if model:
        weights = ""
        if provenance.get("random_weights"):
            weights = f" (random weights, seed {provenance.get('seed')})"
        rows.append(("model", f"`{model}`{weights}"))
    if provenance.get("layer") is not None:
        rows.append(("layer", f"`{provenance['layer']}`"))
    if provenance.get("tokens") is not None:
        tokens = provenance["tokens"]
        rows.append(("token selection", tokens if isinstance(tokens, str) else json.dumps(tokens)))
    rows.append(("normalization", sae.normalization))

    log = _log_rows(training_log)
    last = log[-1] if log else None
    summary = provenance.get("summary") if isinstance(provenance.get("summary"), Mapping) else None
    trained = (
        _figure(metrics, "tokens_trained")
        or provenance.get("tokens_trained")
        or _figure(summary, "tokens_trained")
        or _figure(last, "tokens")
    )
    if trained is not None:
        rows.append(("tokens trained", f"{int(trained):,}"))
    source, note = None, ""
    for candidate, text in (
        (metrics, "evaluated"),
        (summary, "from the training summary"),
        (provenance, "recorded in the SAE's provenance"),
        (last, "over the last logged training interval"),
    ):
        if _figure(candidate, "fvu") is not None:
            source, note = candidate, text
            break
    if source is not None:
        n_tokens = _figure(source, "n_tokens")
        if source is last:
            note += f" (step {last.get('step')}, {int(last.get('tokens', 0)):,} tokens)"
        elif n_tokens:
            note += f" on {int(n_tokens):,} tokens"
        rows.append(("FVU", f"{float(_figure(source, 'fvu')):.4f}"))
        if _figure(source, "l0") is not None:
            rows.append(("L0", f"{float(_figure(source, 'l0')):.2f}"))
        if _figure(source, "dead_fraction") is not None:
            rows.append(("dead fraction", f"{100 * float(_figure(source, 'dead_fraction')):.2f} %"))
    return rows, note, provenance


def model_card(
    sae: HubSAE,
    repo_id: str | None = None,
    *,
    subfolder: str | None = None,
    metrics: Any = None,
    training_log: Any = None,
) -> str:
    """The model card (``README.md``) of ``sae`` on the Hub: YAML metadata (``library_name:
    probe_sae``, tags ``sparse-autoencoder``, ``interpretability``, the family and the model;
    ``base_model`` for a model loaded from the Hub), a table (family, k, n_concepts × d_model,
    model, layer, token selection, normalisation, tokens trained, FVU, L0, dead fraction:
    each when known) and a usage snippet loading ``"hf:<repo_id>[/<subfolder>]"``.

    Args:
        sae: the SAE (its ``provenance`` says which model and layer it was trained on).
        repo_id, subfolder: where it is (to be) published, for the usage snippet.
        metrics: figures of the SAE: an ``EvalReport`` (``evaluate(sae, ...)``,
            ``TrainResult.summary[name]``) or a mapping with ``fvu``, ``l0``,
            ``dead_fraction`` and optionally ``n_tokens`` / ``tokens_trained``.
        training_log: ``TrainResult.metrics`` rows, or a ``training_log.json`` (or the SAE
            folder holding it); its last row gives the tokens trained, and the figures when
            ``metrics`` is not given.
    """
    from huggingface_hub import ModelCardData

    rows, note, provenance = _card_facts(sae, metrics, training_log)
    model = provenance.get("model") or provenance.get("model_name")
    # a spec that load_model rebuilds anywhere (not a wrapped module's name, not a local path)
    spec = provenance.get("model")
    public = spec if isinstance(spec, str) and not _local_path(spec) else None
    tags = [*CARD_TAGS, sae.family, *([public] if public else [])]
    base_model = None if provenance.get("random_weights") else _hub_model(public)
    data = ModelCardData(library_name=LIBRARY_NAME, tags=tags, base_model=base_model)
    name = f"{repo_id}/{subfolder.strip('/')}" if repo_id and subfolder else repo_id
    sae_spec = f"{HUB_PREFIX}{name}" if name else "hf:<org>/<repo>"
    where = ""
    if model:
        where = f" on layer `{provenance.get('layer', '?')}` of `{model}`"
    table = ["| field | value |", "| --- | --- |", *[f"| {key} | {value} |" for key, value in rows]]
    usage = [
        "```python",
        f"from probe_sae import {'load_model, ' if public else ''}load_sae",
        "",
        f'sae = load_sae("{sae_spec}")',
    ]
    if public:
        seed = provenance.get("seed") if provenance.get("random_weights") else None
        seeded = f", seed={seed}" if seed is not None else ""
        usage.append(f'model = load_model("{public}"{seeded})')
    usage += [
        f"codes = sae.encode(acts)  # acts: (N, {sae.d_model}) raw activations of the layer",
        "x_hat = sae.decode(codes)",
        "```",
    ]
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {sae.label} sparse autoencoder",
        "",
        f"A {sae.label} sparse autoencoder{where}, trained and saved with probe_sae "
        f"({sae.n_concepts} concepts over {sae.d_model}-wide activations; it takes raw "
        "activations: its normalisation is saved with it).",
        "",
        *table,
        "",
        *([f"FVU, L0 and dead fraction: {note}.", ""] if note else []),
        "## Usage",
        "",
        *usage,
        "",
        "Files: `config.json` (the family config, width, normalisation and provenance) and "
        "`model.safetensors`, as `sae.save_pretrained(folder)` writes them.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ push


def _check_push_target(repo_id: str, subfolder: str | None) -> str:
    """``subfolder`` cleaned (``""`` for the repo's root); raises ``ValueError`` on a bad name."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts):
        raise ValueError(
            f"push_to_hub takes a full repo id 'your-name/repo-name' (or 'org/repo-name'), got "
            f"{repo_id!r}"
        )
    sub = (subfolder or "").strip("/")
    if sub and (any(p in ("", ".", "..") for p in sub.split("/")) or "@" in sub):
        raise ValueError(
            f"subfolder {subfolder!r} must be a relative folder path without '.', '..' or '@', "
            "e.g. 'layer_6/topk'"
        )
    return sub


def push_sae(
    sae: HubSAE,
    repo_id: str,
    subfolder: str | None = None,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    metrics: Any = None,
    training_log: Any = None,
) -> CommitInfo:
    """Upload ``sae`` to hub repo ``repo_id`` (created if needed), at its root or in
    ``subfolder``: ``config.json`` + ``model.safetensors`` as ``save_pretrained`` writes them,
    a ``README.md`` model card (:func:`model_card`, with ``metrics`` / ``training_log``) and,
    when ``training_log`` is given, ``training_log.json``. ``load_sae("hf:<repo_id>[/<subfolder>]")``
    loads it back. Returns huggingface_hub's ``CommitInfo`` (``.commit_url``).

    ``private`` is passed to ``create_repo`` (``None``: the account's default); ``token``
    defaults to the saved login (``hf auth login``) or ``HF_TOKEN``.
    """
    from huggingface_hub import HfApi

    sub = _check_push_target(repo_id, subfolder)
    rows = _log_rows(training_log)
    card = model_card(sae, repo_id, subfolder=sub, metrics=metrics, training_log=rows or None)
    with tempfile.TemporaryDirectory(prefix="probe_sae-push-") as tmp:
        folder = sae.save_pretrained(Path(tmp) / "sae")
        (folder / CARD_NAME).write_text(card)
        if rows:
            (folder / TRAINING_LOG).write_text(json.dumps([dict(r) for r in rows], indent=1))
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        where = f"{repo_id}/{sub}" if sub else repo_id
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            path_in_repo=sub or None,
            commit_message=commit_message or f"Upload {sae.label} SAE to {where} with probe_sae",
            repo_type="model",
            # a log left by an earlier push would describe another SAE (an uploaded one is kept)
            delete_patterns=[TRAINING_LOG],
        )
