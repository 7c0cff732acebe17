"""Faults around SAEs and the activation cache: failed or mixed saves, bad sizes and paths.

A failed overwrite leaves the previous SAE (and the files beside it) intact and no temporary
file; a folder mixing two saves is refused on load; bad inputs raise errors that name the fix.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

import probe_sae._atomic as atomic
import probe_sae.saes.io as sae_io
from probe_sae.config import ConfigError
from probe_sae.saes import (
    MPSAE,
    MPConfig,
    SAEFormatError,
    SAESaveError,
    TopKConfig,
    TopKSAE,
    build_sae,
    family_config,
    load_sae,
)
from probe_sae.stream import TensorTokenSource
from probe_sae.stream.cache import CachedTokens, read_manifest, write_cache

pytestmark = pytest.mark.usefixtures("one_thread")

D, C = 8, 16
LOG = "training_log.json"


def _sae(seed: int) -> TopKSAE:
    sae = build_sae("topk", D, C, k=2, seed=seed)
    with torch.no_grad():
        sae.b_pre.add_(seed)
    return sae


def _saved(tmp_path: Path) -> tuple[Path, TopKSAE]:
    """A folder holding an SAE and a training log beside it."""
    old = _sae(seed=1)
    folder = old.save_pretrained(tmp_path / "sae")
    (folder / LOG).write_text('[{"step": 1}]')
    return folder, old


def _assert_intact(folder: Path, old: TopKSAE) -> None:
    """``folder`` holds exactly ``old`` and its log, and nothing else (no temporary file)."""
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", LOG]
    assert (folder / LOG).read_text() == '[{"step": 1}]'
    loaded = load_sae(folder)
    assert loaded.config == old.config
    for name, tensor in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def _disk_full(path: str, *args: object) -> None:
    Path(path).write_bytes(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device", path)


# ------------------------------------------------------------------ atomic overwrite
@pytest.mark.parametrize("writer", ["_write_config", "_write_weights"])
def test_failed_overwrite_leaves_the_old_sae_intact(tmp_path, monkeypatch, writer):
    folder, old = _saved(tmp_path)
    monkeypatch.setattr(sae_io, writer, lambda *args: _disk_full(args[-1]))
    with pytest.raises(SAESaveError, match=r"disk is full.*free some space") as info:
        _sae(seed=2).save_pretrained(folder)
    assert info.value.errno == errno.ENOSPC and str(folder) in str(info.value)
    _assert_intact(folder, old)


def test_failed_rename_puts_the_old_files_back(tmp_path, monkeypatch):
    folder, old = _saved(tmp_path)
    real_replace, calls = os.replace, []

    def replace(src, dst):  # the weights move into place, then the config's rename fails
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(SAESaveError, match=str(folder)):
        _sae(seed=2).save_pretrained(folder)
    monkeypatch.undo()
    _assert_intact(folder, old)


def test_overwrite_replaces_both_files_and_keeps_the_others(tmp_path):
    folder, _ = _saved(tmp_path)
    new = _sae(seed=2)
    new.save_pretrained(folder)
    _assert_intact(folder, new)


def test_a_folder_mixing_two_saves_is_refused(tmp_path):
    a = _sae(seed=1).save_pretrained(tmp_path / "a")
    b = _sae(seed=2).save_pretrained(tmp_path / "b")
    shutil.copy(b / "model.safetensors", a / "model.safetensors")  # same shapes, other save
    with pytest.raises(SAEFormatError, match=r"different saves.*save the SAE again"):
        load_sae(a)


def test_a_failed_save_into_a_new_folder_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sae_io, "_write_weights", lambda *args: _disk_full(args[-1]))
    with pytest.raises(SAESaveError, match="disk is full"):
        _sae(seed=1).save_pretrained(tmp_path / "new" / "sae")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_gives_a_clear_error(tmp_path, monkeypatch):
    folder, old = _saved(tmp_path)
    if os.geteuid() != 0:
        folder.chmod(0o555)
    else:  # root ignores permissions: simulate what the OS would answer

        def denied(folder: Path, name: str, suffix: str) -> Path:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder / name))

        monkeypatch.setattr(atomic, "_temporary", denied)
    try:
        with pytest.raises(SAESaveError, match=r"no permission.*writable folder") as info:
            _sae(seed=2).save_pretrained(folder)
    finally:
        folder.chmod(0o755)
    assert info.value.errno == errno.EACCES and str(folder) in str(info.value)
    monkeypatch.undo()
    _assert_intact(folder, old)


def test_saving_onto_a_file_names_the_path(tmp_path):
    path = tmp_path / "model.bin"
    path.write_text("not an SAE")
    with pytest.raises(SAESaveError, match=r"is a file.*pass a folder path"):
        _sae(seed=1).save_pretrained(path)
    with pytest.raises(SAESaveError, match=r"pass a folder path"):
        _sae(seed=1).save_pretrained(path / "sub")
    assert path.read_text() == "not an SAE"


def test_saving_over_another_kind_of_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(SAESaveError, match=r"not a probe_sae SAE's.*its own folder"):
        _sae(seed=1).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {"model_type": "vit"}


# ---------------------------------------------------------------------- bad configs
def _edit_config(folder: Path, edit) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(cfg)))


def test_a_config_that_is_a_json_list_names_the_file(tmp_path):
    folder = _sae(seed=1).save_pretrained(tmp_path / "s")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(SAEFormatError, match=r"config\.json holds a JSON list.*save the SAE again"):
        load_sae(folder)


@pytest.mark.parametrize("dtype", ["float99", "Tensor", 3, None])
def test_an_unknown_dtype_names_the_file(tmp_path, dtype):
    folder = _sae(seed=1).save_pretrained(tmp_path / "s")
    _edit_config(folder, lambda cfg: {**cfg, "dtype": dtype})
    with pytest.raises(SAEFormatError, match=r"config\.json is invalid: dtype.*'float32'"):
        load_sae(folder)


@pytest.mark.parametrize("field,value", [("n_concepts", 0), ("d_model", -8), ("d_model", 8.5)])
def test_a_saved_config_with_bad_sizes_names_the_file(tmp_path, field, value):
    folder = _sae(seed=1).save_pretrained(tmp_path / "s")
    _edit_config(folder, lambda cfg: {**cfg, field: value})
    with pytest.raises(SAEFormatError, match=rf"config\.json.*{field}"):
        load_sae(folder)


# ------------------------------------------------------------------------ bad sizes
@pytest.mark.parametrize(
    "make",
    [
        lambda: build_sae("topk", -3, 8),
        lambda: build_sae("topk", -3),  # n_concepts would be expansion × -3
        lambda: build_sae("mp", 0, 8),
        lambda: build_sae("relu", 8.0, 16),
        lambda: TopKSAE(-1),
        lambda: TopKSAE(0, TopKConfig(n_concepts=8, k=2)),
    ],
)
def test_a_bad_width_says_what_d_model_is(make):
    with pytest.raises(ValueError, match=r"d_model must be a positive integer.*acts\.shape"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_sae("topk", 8, 0),
        lambda: build_sae("topk", 8, -3),
        lambda: build_sae(TopKConfig(k=2), 8, 0),
        lambda: family_config("mp", n_concepts=0),
        lambda: TopKConfig(n_concepts=0),
        lambda: MPSAE(8, MPConfig(n_concepts=-1)),
    ],
)
def test_zero_or_negative_concepts_are_refused_not_defaulted(make):
    with pytest.raises(ConfigError, match=r"n_concepts must be positive.*leave it unset"):
        make()


@pytest.mark.parametrize("expansion", [0, -2])
def test_a_bad_expansion_is_refused(expansion):
    with pytest.raises(ConfigError, match=r"expansion must be positive.*n_concepts = expansion"):
        build_sae("topk", 8, expansion=expansion, k=2)
    with pytest.raises(ConfigError, match=r"expansion must be positive"):
        TopKConfig(expansion=expansion)


def test_fractional_sizes_are_refused_not_truncated():
    with pytest.raises(ConfigError, match=r"n_concepts must be an integer.*whole number"):
        build_sae("mp", 8, 2.5)


# ------------------------------------------------------------------------- MP steps
def test_mp_steps_are_capped_with_a_clear_error():
    sae = MPSAE(D, MPConfig(n_concepts=C, k=2))
    x = torch.randn(4, D)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"must be in \[1, {4 * D}\].*pass a smaller k"):
        sae.encode(x, k=10**6)
    assert time.perf_counter() - start < 1.0
    assert sae.max_steps == 4 * D
    assert sae.encode(x, k=sae.max_steps).shape == (4, C)  # k > d stays legitimate
    with pytest.raises(ValueError, match=r"pass a smaller k"):
        sae(x, k=sae.max_steps + 1)
    with pytest.raises(ValueError, match=r"must be positive"):
        sae.encode(x, k=0)
    with pytest.raises(TypeError, match=r"must be an integer"):
        sae.encode(x, k=2.5)
    with pytest.raises(ValueError, match=r"pass a smaller k"):
        MPSAE(D, MPConfig(n_concepts=C, k=4 * D + 1))


# -------------------------------------------------------------------- cache manifest
def _cache(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    tokens = {"x": torch.randn(200, 4, generator=g)}
    return write_cache(
        TensorTokenSource(tokens, 50), tmp_path / "cache", shard_tokens=100, progress=False
    )


def _point_first_shard_to(folder: Path, name: str) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["files"]["x"]["file"] = name
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_manifest_cannot_point_outside_its_folder(tmp_path, how):
    folder = _cache(tmp_path)
    first = read_manifest(folder)["shards"][0]["files"]["x"]["file"]
    outside = tmp_path / "outside.bin"
    shutil.copy(folder / first, outside)  # a readable file of the right size, outside
    if how == "absolute":
        _point_first_shard_to(folder, str(outside))
    elif how == "dotdot":
        _point_first_shard_to(folder, "../outside.bin")
    else:
        (folder / first).unlink()
        (folder / first).symlink_to(outside)
    with pytest.raises(ValueError, match=r"outside the cache folder.*rewrite the cache"):
        CachedTokens(folder, batch_size=50)


def test_a_shard_of_the_wrong_size_is_reported(tmp_path):
    folder = _cache(tmp_path)
    first = read_manifest(folder)["shards"][0]["files"]["x"]["file"]
    (folder / first).write_bytes(b"\0" * 12)
    reader = CachedTokens(folder, batch_size=50, shards_per_group=2)
    with pytest.raises(ValueError, match=r"does not hold 100 × 4 float16 values.*rewrite"):
        reader.next_batch()


def test_a_folder_saved_before_save_ids_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    sae = _sae(seed=1)
    folder = sae.save_pretrained(tmp_path / "s")
    weights = folder / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt"})  # no save_id
    with pytest.raises(SAEFormatError, match="different saves"):  # new config, old weights
        load_sae(folder)
    _edit_config(folder, lambda cfg: {k: v for k, v in cfg.items() if k != "save_id"})
    assert torch.equal(load_sae(folder).b_pre, sae.b_pre)
