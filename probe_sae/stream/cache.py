"""On-disk activation cache: a stream written once to sharded files, trained from many times.

Layout of a cache folder::

    manifest.json                     model, layers, token selection, count, dtype, hashes
    shard-00000.<layer>.bin           raw little-endian rows (count × width) per hooked layer
    ...

Under ``torch.distributed`` (``torchrun``) every rank drains its own stream into its own
shards (``shard-r<rank>-<index>.<layer>.bin``) and rank 0 writes the one manifest listing
every rank's shards; :class:`CachedTokens` reads such a cache like any other, and in a
distributed run each rank reads a disjoint subset of the shards (every ``world_size``-th).

Shards are plain memory-mappable arrays (fp16 or fp32), written to temporary names and
renamed into place, with their SHA-256 in the manifest, which is written last: a folder
with a manifest is complete. :class:`CachedTokens` reads shards sequentially, a group of
shards at a time, and shuffles tokens across the group with a seeded permutation, so
training from the cache mixes shards while the disk is read front to back.

The reader opens only files inside the cache folder: a manifest naming a shard by an
absolute path, through ``..``, or through a symlink that leads out of the folder is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae._atomic import atomic_write
from probe_sae.constants import CACHE_FORMAT as FORMAT
from probe_sae.constants import CACHE_FORMAT_VERSION as FORMAT_VERSION
from probe_sae.constants import CACHE_MANIFEST_NAME
from probe_sae.data.sharding import distributed_rank
from probe_sae.stream.tokens import TokenSource

_DTYPES = {"float16": np.float16, "float32": np.float32}


def _safe(layer: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in layer)


def write_cache(
    source: TokenSource,
    folder: str | Path,
    *,
    shard_tokens: int = 262_144,
    dtype: str = "float16",
    max_tokens: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Drain a token source (e.g. an :class:`ActivationStream`) into a cache folder.

    Non-finite tokens are dropped and counted in the manifest (``"nonfinite_tokens"``).
    ``metadata`` (model spec, layer, token selection...) is stored in the manifest; for an
    ``ActivationStream`` it is filled in from the stream.

    In a ``torch.distributed`` run every rank calls it with its own source (its part of the
    images): each writes its shards, rank 0 the single manifest, and every rank returns once
    the manifest is written.
    """
    rank, world_size = distributed_rank()
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if (out / CACHE_MANIFEST_NAME).exists():
        raise FileExistsError(f"{out} already holds a cache; remove it or choose another folder")
    widths = source.widths()
    np_dtype = _DTYPES[dtype]
    info = dict(metadata or {})
    if hasattr(source, "model"):
        info.setdefault("model", getattr(source.model, "name", type(source.model).__name__))
        info.setdefault("tokens", repr(getattr(source, "tokens", "all")))
    shards: list[dict[str, Any]] = []
    pending: dict[str, list[np.ndarray]] = {k: [] for k in widths}
    n_pending = total = nonfinite = 0
    digest = hashlib.sha256()
    bar = tqdm(desc="caching activations", unit="tok", disable=not progress, total=max_tokens)

    def flush() -> None:
        nonlocal n_pending
        if n_pending == 0:
            return
        index = len(shards)
        entry: dict[str, Any] = {"count": n_pending, "files": {}}
        for layer, parts in pending.items():
            rows = np.ascontiguousarray(np.concatenate(parts).astype(np_dtype))
            stem = f"shard-{index:05d}" if world_size == 1 else f"shard-r{rank:03d}-{index:05d}"
            name = f"{stem}.{_safe(layer)}.bin"
            atomic_write(out / name, rows.tofile)
            sha = hashlib.sha256(rows.tobytes()).hexdigest()
            digest.update(sha.encode())
            entry["files"][layer] = {"file": name, "sha256": sha}
            parts.clear()
        shards.append(entry)
        n_pending = 0

    while max_tokens is None or total < max_tokens:
        batch = source.next_batch()
        if batch is None:
            break
        finite = torch.ones(next(iter(batch.values())).shape[0], dtype=torch.bool)
        for layer in widths:
            finite &= torch.isfinite(batch[layer]).all(dim=1).cpu()
        nonfinite += int((~finite).sum())
        n = int(finite.sum())
        if max_tokens is not None:
            n = min(n, max_tokens - total)
        for layer in widths:
            pending[layer].append(batch[layer][finite][:n].detach().float().cpu().numpy())
        n_pending += n
        total += n
        bar.update(n)
        if n_pending >= shard_tokens:
            flush()
    flush()
    bar.close()
    if world_size > 1:
        shards, total, nonfinite, digest = _gather_shards(shards, total, nonfinite, rank)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layers": {layer: {"width": w} for layer, w in widths.items()},
        "count": total,
        "dtype": dtype,
        "nonfinite_tokens": nonfinite,
        "sha256": digest.hexdigest(),
        "shards": shards,
        **info,
    }
    if world_size > 1:
        manifest["ranks"] = world_size
    text = json.dumps(manifest, indent=1)
    if rank == 0:
        atomic_write(out / CACHE_MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text))
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()  # the manifest exists for every rank from here on
    return out


def _gather_shards(
    shards: list[dict[str, Any]], total: int, nonfinite: int, rank: int
) -> tuple[list[dict[str, Any]], int, int, Any]:
    """Every rank's shard entries (rank order, each tagged with its rank), token and
    non-finite counts, and the digest over all of them, on every rank."""
    import torch.distributed as dist

    mine = {"shards": [{**s, "rank": rank} for s in shards], "total": total, "bad": nonfinite}
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    all_shards = [s for part in every for s in part["shards"]]
    digest = hashlib.sha256()
    for shard in all_shards:
        for entry in shard["files"].values():
            digest.update(entry["sha256"].encode())
    return (
        all_shards,
        sum(p["total"] for p in every),
        sum(p["bad"] for p in every),
        digest,
    )


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a cache folder written by :func:`write_cache` (layers, widths,
    shards, token counts, metadata); raises when the folder is not a complete cache."""
    path = Path(folder) / CACHE_MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no manifest.json: not a (complete) activation cache"
        )
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupted (not valid JSON: {err}); rewrite the cache") from err
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("format_version") != FORMAT_VERSION
    ):
        raise ValueError(f"{path} is not an activation cache of format version {FORMAT_VERSION}")
    _check_manifest(path, manifest)
    return manifest


def _check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Raise a clear error unless the manifest's layers, dtype and shards are well formed and
    every shard file lies inside the cache folder."""
    layers, shards = manifest.get("layers"), manifest.get("shards")
    if manifest.get("dtype") not in _DTYPES:
        problem = f"dtype {manifest.get('dtype')!r} is not one of {sorted(_DTYPES)}"
    elif not isinstance(layers, dict) or not all(
        isinstance(v, dict) and _is_count(v.get("width")) and v["width"] > 0
        for v in layers.values()
    ):
        problem = "'layers' is not {layer: {'width': positive integer}}"
    elif not isinstance(shards, list) or not all(_shard_ok(s, layers) for s in shards):
        problem = "'shards' is not a list of {'count': n, 'files': {layer: {'file': name}}}"
    else:
        for shard in shards:
            for layer, entry in shard["files"].items():
                _shard_path(path.parent, entry["file"], layer)
        return
    raise ValueError(f"{path} is malformed: {problem}; rewrite the cache with write_cache")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shard_ok(shard: object, layers: dict[str, Any]) -> bool:
    """Whether a manifest's shard entry has a count and one file name for every layer."""
    if not isinstance(shard, dict) or not _is_count(shard.get("count")):
        return False
    files = shard.get("files")
    return (
        isinstance(files, dict)
        and set(files) == set(layers)
        and all(isinstance(f, dict) and isinstance(f.get("file"), str) for f in files.values())
    )


def _shard_path(folder: Path, name: str, layer: str) -> Path:
    """The path of the shard file ``name`` of a cache folder; refuses a name that leads out of
    the folder (an absolute path, ``..``, or a symlink pointing elsewhere)."""
    path = folder / name
    root = folder.resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or not name:
        escapes = True
    else:
        escapes = not path.resolve().is_relative_to(root)
    if escapes:
        raise ValueError(
            f"the manifest of the cache {folder} names the shard file {name!r} ({layer}), which "
            "lies outside the cache folder; a cache may only read files inside its own folder: "
            "rewrite the cache with write_cache, or copy the shards into the folder"
        )
    return path


class CachedTokens:
    """A resumable token source over a cache folder.

    Each epoch visits the shards in a seeded order, ``shards_per_group`` at a time; a group's
    tokens are permuted together and served in batches (the last partial batch of a group is
    dropped). Implements the :class:`~probe_sae.stream.tokens.TokenSource` protocol.

    ``rank`` of ``world_size`` readers reads the shards ``rank, rank + world_size, ...`` only
    (default: those of the initialised ``torch.distributed`` group, else all shards).
    ``pin_memory`` keeps each group in page-locked memory, for fast non-blocking copies to a
    GPU.
    """

    def __init__(
        self,
        folder: str | Path,
        batch_size: int,
        *,
        shards_per_group: int = 4,
        epochs: int | None = 1,
        seed: int = 0,
        verify: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if not self.manifest["shards"]:
            raise ValueError(f"the cache {self.folder} is empty")
        if rank is None or world_size is None:
            rank, world_size = distributed_rank()
        n_shards = len(self.manifest["shards"])
        if n_shards < world_size:
            raise ValueError(
                f"the cache {self.folder} has {n_shards} shard(s) for {world_size} ranks: every "
                "rank reads whole shards; write it again with a smaller shard_tokens, or run "
                "fewer ranks"
            )
        #: the manifest indices of the shards this reader serves
        self.shard_ids = list(range(rank, n_shards, world_size))
        self.pin_memory = pin_memory
        self.batch_size, self.shards_per_group = int(batch_size), max(int(shards_per_group), 1)
        self.epochs, self.seed = epochs, int(seed)
        self.epoch = self.group = self.batch_index = 0
        self._pool: dict[str, Tensor] | None = None
        if verify:
            self.verify()

    def widths(self) -> dict[str, int]:
        return {k: int(v["width"]) for k, v in self.manifest["layers"].items()}

    def verify(self) -> None:
        """Re-hash every shard; raise if one differs from the manifest."""
        for shard in self.manifest["shards"]:
            for layer, f in shard["files"].items():
                data = self._path(f["file"], layer).read_bytes()
                if hashlib.sha256(data).hexdigest() != f.get("sha256"):
                    raise ValueError(
                        f"{f['file']} ({layer}) does not match its hash: the cache is corrupted"
                    )

    def _path(self, name: str, layer: str) -> Path:
        """A shard file's path, checked to lie inside the cache folder and to exist."""
        path = _shard_path(self.folder, name, layer)
        if not path.is_file():
            raise FileNotFoundError(
                f"the cache {self.folder} lacks the shard file {name} ({layer}) its manifest "
                "names: it is incomplete; rewrite it with write_cache"
            )
        return path

    def _load(self, index: int, layer: str) -> np.ndarray:
        shard = self.manifest["shards"][index]
        width, count = self.manifest["layers"][layer]["width"], shard["count"]
        name = shard["files"][layer]["file"]
        dtype = _DTYPES[self.manifest["dtype"]]
        path = self._path(name, layer)
        if path.stat().st_size != count * width * np.dtype(dtype).itemsize:
            raise ValueError(
                f"the shard file {name} ({layer}) of the cache {self.folder} does not hold "
                f"{count} × {width} {self.manifest['dtype']} values: the cache is corrupted; "
                "rewrite it with write_cache"
            )
        if count == 0:
            return np.empty((0, width), dtype=dtype)
        return np.asarray(np.memmap(path, dtype=dtype, mode="r")).reshape(count, width)

    def _groups(self) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = [
            self.shard_ids[i] for i in torch.randperm(len(self.shard_ids), generator=gen).tolist()
        ]
        g = self.shards_per_group
        return [order[i : i + g] for i in range(0, len(order), g)]

    def _fill(self) -> None:
        shards = self._groups()[self.group]
        pool = {
            layer: torch.from_numpy(
                np.concatenate([self._load(i, layer) for i in sorted(shards)]).astype(np.float32)
            )
            for layer in self.manifest["layers"]
        }
        n = next(iter(pool.values())).shape[0]
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 1_000_003 + self.group
        )
        perm = torch.randperm(n, generator=gen)
        self._pool = {k: v[perm] for k, v in pool.items()}
        if self.pin_memory and torch.cuda.is_available():
            self._pool = {k: v.pin_memory() for k, v in self._pool.items()}

    def next_batch(self) -> dict[str, Tensor] | None:
        while True:
            if self.epochs is not None and self.epoch >= self.epochs:
                return None
            if self._pool is None:
                self._fill()
            n = next(iter(self._pool.values())).shape[0]
            lo = self.batch_index * self.batch_size
            if lo + self.batch_size <= n:
                self.batch_index += 1
                return {k: v[lo : lo + self.batch_size] for k, v in self._pool.items()}
            self.group, self.batch_index, self._pool = self.group + 1, 0, None
            if self.group >= len(self._groups()):
                self.epoch, self.group = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "group": self.group,
            "batch": self.batch_index,
            "seed": self.seed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"the checkpoint's cache reader used seed {state['seed']}, this one uses {self.seed}"
            )
        if (int(state["epoch"]), int(state["group"])) != (self.epoch, self.group):
            self._pool = None
        self.epoch, self.group, self.batch_index = (
            int(state["epoch"]),
            int(state["group"]),
            int(state["batch"]),
        )
