"""The on-disk activation cache: round trip, manifest, shuffling across shards, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probe_sae.stream import TensorTokenSource
from probe_sae.stream.cache import CachedTokens, read_manifest, write_cache


def _tokens(n=1000, d=8):
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.1": torch.randn(n, d, generator=g),
        "blocks.2": torch.randn(n, d + 4, generator=g),
    }


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cache_round_trip_keeps_every_token(tmp_path, dtype):
    toks = _tokens()
    toks["blocks.1"][7, 2] = float("nan")
    src = TensorTokenSource(toks, batch_size=100, epochs=1, seed=0)
    folder = write_cache(
        src,
        tmp_path / "c",
        shard_tokens=250,
        dtype=dtype,
        metadata={"model": "toy"},
        progress=False,
    )
    manifest = read_manifest(folder)
    assert (
        manifest["count"] == 999
        and manifest["nonfinite_tokens"] == 1
        and manifest["model"] == "toy"
    )
    assert len(manifest["shards"]) == 4 and manifest["layers"]["blocks.2"]["width"] == 12
    reader = CachedTokens(folder, batch_size=50, shards_per_group=2, verify=True)
    got = []
    while (b := reader.next_batch()) is not None:
        got.append(b)
    a = torch.cat([b["blocks.1"] for b in got])
    b2 = torch.cat([b["blocks.2"] for b in got])
    assert a.shape[0] == 950  # the partial batch at the end of each group is dropped
    stored = getattr(torch, dtype)

    def rows(t):
        return [tuple(r) for r in t.to(stored).float().tolist()]

    index = {
        r: i
        for i, r in enumerate(rows(toks["blocks.1"]))
        if bool(torch.isfinite(toks["blocks.1"][i]).all())
    }
    served = rows(a)
    assert len(set(served)) == 950 and all(r in index for r in served)  # exact rows, no repeats
    paired = torch.tensor([index[r] for r in served])
    assert torch.equal(b2, toks["blocks.2"][paired].to(stored).float())  # layers stay paired


def test_cache_mixes_shards_and_resumes(tmp_path):
    toks = {"x": torch.arange(800, dtype=torch.float32)[:, None].repeat(1, 4)}
    folder = write_cache(
        TensorTokenSource(toks, 100, epochs=1, seed=0),
        tmp_path / "c",
        shard_tokens=200,
        dtype="float32",
        progress=False,
    )
    reader = CachedTokens(folder, batch_size=40, shards_per_group=2, epochs=2, seed=5)
    states, batches = [], []
    while True:
        states.append(reader.state_dict())
        b = reader.next_batch()
        if b is None:
            break
        batches.append(b["x"][:, 0])
    states.pop()
    shard_of = {}
    manifest = read_manifest(folder)
    for i, shard in enumerate(manifest["shards"]):
        rows = np.fromfile(folder / shard["files"]["x"]["file"], dtype=np.float32).reshape(-1, 4)[
            :, 0
        ]
        for v in rows:
            shard_of[float(v)] = i
    assert max(len({shard_of[float(v)] for v in b}) for b in batches) == 2  # a batch mixes shards
    for i in (0, 3, 7, len(batches) - 1):
        fresh = CachedTokens(folder, batch_size=40, shards_per_group=2, epochs=2, seed=5)
        fresh.load_state_dict(states[i])
        assert torch.equal(fresh.next_batch()["x"][:, 0], batches[i])


def test_corrupted_or_incomplete_cache(tmp_path):
    folder = write_cache(
        TensorTokenSource(_tokens(), 100), tmp_path / "c", shard_tokens=500, progress=False
    )
    shard = folder / read_manifest(folder)["shards"][0]["files"]["blocks.1"]["file"]
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        CachedTokens(folder, 10, verify=True)
    (folder / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a \\(complete\\) activation cache"):
        CachedTokens(folder, 10)
    with pytest.raises(FileExistsError):
        write_cache(TensorTokenSource(_tokens(), 100), tmp_path / "d", progress=False)
        write_cache(TensorTokenSource(_tokens(), 100), tmp_path / "d", progress=False)
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["count"] == 1000
