"""On-disk activation cache: a stream written once to sharded files, trained from many times.

Layout of a cache folder::

    manifest.json                     model, layers, token selection, count, dtype, hashes
    shard-00000.<layer>.bin           raw little-endian rows (count × width) per hooked layer
    ...

Shards are plain memory-mappable arrays (fp16 or fp32), written to temporary names and
renamed into place, with their SHA-256 in the manifest, which is written last: a folder
with a manifest is complete. :class:`CachedTokens` reads shards sequentially, a group of
shards at a time, and shuffles tokens across the group with a seeded permutation, so
training from the cache mixes shards while the disk is read front to back.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae.constants import CACHE_FORMAT as FORMAT
from probe_sae.constants import CACHE_FORMAT_VERSION as FORMAT_VERSION
from probe_sae.constants import CACHE_MANIFEST_NAME
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
    """
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
            name = f"shard-{index:05d}.{_safe(layer)}.bin"
            tmp = out / f".{name}.tmp"
            rows.tofile(tmp)
            os.replace(tmp, out / name)
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
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / CACHE_MANIFEST_NAME)
    return out


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a cache folder written by :func:`write_cache` (layers, widths,
    shards, token counts, metadata); raises when the folder is not a complete cache."""
    path = Path(folder) / CACHE_MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no manifest.json: not a (complete) activation cache"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an activation cache of format version {FORMAT_VERSION}")
    return manifest


class CachedTokens:
    """A resumable token source over a cache folder.

    Each epoch visits the shards in a seeded order, ``shards_per_group`` at a time; a group's
    tokens are permuted together and served in batches (the last partial batch of a group is
    dropped). Implements the :class:`~probe_sae.stream.tokens.TokenSource` protocol.
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
    ) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if not self.manifest["shards"]:
            raise ValueError(f"the cache {self.folder} is empty")
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
                data = (self.folder / f["file"]).read_bytes()
                if hashlib.sha256(data).hexdigest() != f["sha256"]:
                    raise ValueError(
                        f"{f['file']} ({layer}) does not match its hash: the cache is corrupted"
                    )

    def _load(self, index: int, layer: str) -> np.ndarray:
        shard = self.manifest["shards"][index]
        width = self.manifest["layers"][layer]["width"]
        path = self.folder / shard["files"][layer]["file"]
        arr = np.memmap(path, dtype=_DTYPES[self.manifest["dtype"]], mode="r")
        return np.asarray(arr).reshape(shard["count"], width)

    def _groups(self) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.manifest["shards"]), generator=gen).tolist()
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
