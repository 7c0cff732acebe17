"""Save → load round trips for every family, and clear errors for bad folders."""

from __future__ import annotations

import json

import pytest
import torch

from probe_sae import SAEFormatError, build_sae, kmeans, load_sae

D, C = 12, 24


def _trained(family: str):
    torch.manual_seed(0)
    x = torch.randn(128, D) * 2 + 1
    extra = {}
    if family in ("asae", "rasae"):
        extra["candidates"] = kmeans(x, 32, seed=0)
    if family in ("topk", "batchtopk", "mp", "asae", "rasae"):
        extra["k"] = 3
    sae = build_sae(family, D, C, seed=1, **extra)
    sae.set_normalization(x.mean(0), x.std(0), "standardize")
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        sae(x).loss.backward()
        sae.prepare_gradients()
        opt.step()
        sae.apply_constraints()
    return sae.eval(), x


FAMILIES = ["relu", "topk", "batchtopk", "jumprelu", "mp", "asae", "rasae"]


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_gives_identical_outputs(family, tmp_path):
    sae, x = _trained(family)
    sae.save_pretrained(tmp_path / family)
    assert sorted(p.name for p in (tmp_path / family).iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_sae(tmp_path / family)
    assert type(loaded) is type(sae) and loaded.normalization == "standardize"
    assert loaded.config == sae.config and loaded.config.n_concepts == C
    saved = json.loads((tmp_path / family / "config.json").read_text())
    assert saved["family"] == sae.family and saved["format_version"] == 2
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x).x_hat, sae(x).x_hat)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_after_changing_dtype(family, tmp_path):
    sae, x = _trained(family)
    sae = sae.to(torch.float64)
    x = x.double()
    sae.save_pretrained(tmp_path / family)
    config = json.loads((tmp_path / family / "config.json").read_text())
    assert config["dtype"] == "float64"
    loaded = load_sae(tmp_path / family)
    assert loaded.b_pre.dtype == torch.float64
    with torch.no_grad():
        assert torch.equal(loaded(x).x_hat, sae(x).x_hat)
    as_float = load_sae(tmp_path / family, dtype=torch.float32)
    assert as_float.b_pre.dtype == torch.float32


def test_missing_or_foreign_folder(tmp_path):
    with pytest.raises(SAEFormatError, match="not a folder"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFormatError, match=r"no config\.json"):
        load_sae(tmp_path / "empty")


def test_corrupted_files_give_clear_errors(tmp_path):
    sae, _ = _trained("topk")
    folder = sae.save_pretrained(tmp_path / "s")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SAEFormatError, match="corrupted or truncated"):
        load_sae(folder)
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(SAEFormatError, match="not valid JSON"):
        load_sae(folder)


def test_other_format_version_gives_clear_error(tmp_path):
    sae, _ = _trained("mp")
    folder = sae.save_pretrained(tmp_path / "s")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match=r"version 99.*upgrade probe_sae"):
        load_sae(folder)
    cfg["format_version"], cfg["family"] = 2, "mystery"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="mystery"):
        load_sae(folder)


def test_weights_that_do_not_match_the_config(tmp_path):
    sae, _ = _trained("topk")
    folder = sae.save_pretrained(tmp_path / "s")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_concepts"] = C + 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="does not match"):
        load_sae(folder)


def test_save_overwrites_atomically_and_never_pickles(tmp_path):
    sae, _ = _trained("rasae")
    folder = sae.save_pretrained(tmp_path / "s")
    sae.save_pretrained(folder)  # overwrite in place
    assert not list(folder.glob(".*tmp"))
    raw = (folder / "model.safetensors").read_bytes()
    assert b"pickle" not in raw[:4096] and raw[8:9] == b"{"  # safetensors header is JSON


def test_label_names_the_archetypal_dictionary_and_survives_a_round_trip(tmp_path):
    from probe_sae import evaluate

    cands = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    cases = {
        "rasae (topk)": build_sae("rasae", 8, 16, candidates=cands, k=2),
        "asae (topk)": build_sae("asae", 8, 16, candidates=cands, k=2),
        "asae (relu)": build_sae("asae", 8, 16, candidates=cands, encoder="relu"),
        "topk": build_sae("topk", 8, 16, k=2),
        "mp": build_sae("mp", 8, 16, k=2),
    }
    x = torch.randn(32, 8)
    for label, sae in cases.items():
        assert sae.label == label
        assert load_sae(sae.save_pretrained(tmp_path / label.replace(" ", "_"))).label == label
        assert evaluate(sae, x).family == label
