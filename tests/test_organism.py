"""The model organism: shipped weights, held-out accuracy, `VisionModel` behaviour, caching."""

from __future__ import annotations

import json

import model_checks as checks
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from probe_sae import hooks
from probe_sae.models import VisionModel, load_model
from probe_sae.organism import load as organism_load
from probe_sae.organism import model as organism
from probe_sae.organism import train as organism_train
from probe_sae.organism import world as synthetic
from probe_sae.organism.train import Recipe


@pytest.fixture(scope="module")
def model() -> VisionModel:
    return organism_load.load_organism(train_if_missing=False)


@pytest.fixture(scope="module")
def held_out() -> synthetic.ConceptImages:
    return synthetic.generate(1024, seed=organism_train.EVAL_SEED, start=50_000)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return synthetic.generate(3, seed=11).images


def test_shipped_weights_load_without_training(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("load_organism() trained although weights ship with the package")

    monkeypatch.setattr(organism_load, "train_and_save", no_training)
    loaded = organism_load.load_organism()
    assert isinstance(loaded, VisionModel) and loaded.name == "organism"
    assert (organism.PACKAGED_DIR / "model.safetensors").stat().st_size < 2_500_000


def test_load_model_spec(pixels):
    by_name = load_model("organism")
    by_path = load_model(f"organism:{organism.PACKAGED_DIR}")
    assert by_name.name == by_path.name == "organism"
    with torch.no_grad():
        torch.testing.assert_close(by_name(pixels), by_path(pixels), rtol=0, atol=0)


def test_input_normalisation_folds_exactly():
    torch.manual_seed(0)
    module = organism.build_vit().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = module((x - organism_train.PIXEL_MEAN) / organism_train.PIXEL_STD)
        organism_train.fold_input_normalisation(module)
        torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-5)


def test_held_out_accuracy(model, held_out):
    with torch.no_grad():
        logits = model(held_out.images)
    assert logits.shape == (1024, synthetic.N_KINDS)
    scores = organism_train.score_logits(logits, held_out.presence)
    assert scores.mean_auc >= 0.98
    recorded = organism.read_config(organism.PACKAGED_DIR)["held_out"]
    assert abs(scores.mean_auc - recorded["mean_auc"]) < 0.01
    assert abs(scores.macro_f1 - recorded["macro_f1"]) < 0.05


def test_layout_blocks_and_layers(model):
    layout = model.layout
    assert layout.cls_index == 0 and layout.register_indices == (1, 2, 3, 4)
    assert layout.n_prefix == 5 and layout.grid == (8, 8) and layout.patch_size == (8, 8)
    assert model.input_size == (64, 64)
    checks.check_blocks_listed(model, 4, 128)
    assert model.blocks == [f"blocks.{i}" for i in range(4)]


def test_hooks_on_the_organism(model, pixels):
    checks.check_capture_matches_hooks(model, pixels)
    checks.check_selections(model, pixels, cls=0, registers=[1, 2, 3, 4], patches=list(range(5, 69)))
    checks.check_no_hooks_remain(model, pixels)
    checks.check_early_stop(model, pixels)


def test_head_directions_are_the_class_directions(model, pixels):
    """logits = head(norm(last block))[CLS]: the head rows are the class directions, and with
    the LayerNorm scale folded in they act on the standardised residual stream."""
    directions_KD = organism.head_directions(model)
    assert directions_KD.shape == (synthetic.N_KINDS, 128)
    head, norm = model.module.head, model.module.norm
    with torch.no_grad():
        logits = model(pixels)
    cls = hooks.capture(model, pixels, "norm", tokens="cls")["norm"].acts
    torch.testing.assert_close(cls @ directions_KD.T + head.bias, logits)
    residual = hooks.capture(model, pixels, -1, tokens="cls")["blocks.-1"].acts
    standard = F.layer_norm(residual, (128,), eps=norm.eps)
    folded_KD = organism.head_directions(model, fold_norm=True)
    torch.testing.assert_close(standard @ folded_KD.T + head.weight @ norm.bias + head.bias, logits)


def test_pil_images_match_tensors(model):
    images = synthetic.generate(2, seed=3).images
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in images]
    with torch.no_grad():
        from_pil, from_tensor = model(pil), model(images)
    torch.testing.assert_close(from_pil, from_tensor, atol=0.05, rtol=0)
    big = [im.resize((128, 128)) for im in pil]
    assert model.preprocess(big).shape == (2, 3, 64, 64)


def test_first_use_trains_once_then_loads_from_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(organism, "PACKAGED_DIR", tmp_path / "not_installed")
    monkeypatch.setenv("PROBE_SAE_CACHE", str(tmp_path / "cache"))
    assert organism.cache_dir() == tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=r"organism\.train --out"):
        organism_load.load_organism(train_if_missing=False)
    calls = []
    real = organism_train.train_and_save

    def tiny(folder, **kwargs):
        calls.append(folder)
        return real(folder, recipe=Recipe(steps=2, batch_size=8), eval_images=256, progress=False)

    monkeypatch.setattr(organism_load, "train_and_save", tiny)
    first = organism_load.load_organism()
    folder = tmp_path / "cache" / "organism"
    assert calls == [folder]
    assert (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["recipe"]["steps"] == 2 and 0 <= config["held_out"]["mean_auc"] <= 1
    second = organism_load.load_organism()
    assert calls == [folder], "the cached organism was trained again"
    x = synthetic.generate(4, seed=0).images
    with torch.no_grad():
        torch.testing.assert_close(first(x), second(x), rtol=0, atol=0)


def test_bad_folders_say_how_to_fix(tmp_path):
    with pytest.raises(organism.OrganismFormatError, match=r"organism\.train --out"):
        organism_load.load_organism(path=tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(organism.OrganismFormatError, match="not valid JSON"):
        organism_load.load_organism(path=tmp_path)
    doc = organism.read_config(organism.PACKAGED_DIR)
    doc["kind_names"] = list(reversed(doc["kind_names"]))
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(organism.OrganismFormatError, match="other object kinds"):
        organism_load.load_organism(path=tmp_path)


def test_scores_match_a_reference():
    rng = np.random.default_rng(0)
    labels = rng.random((400, 3)) < 0.3
    logits = rng.normal(size=(400, 3)) + 1.5 * labels
    logits[:10, 0] = logits[10:20, 0]  # ties
    scores = organism_train.score_logits(torch.tensor(logits), torch.tensor(labels))
    for k in range(3):  # brute-force AUC: P(score_pos > score_neg) + 0.5 P(tie)
        pos, neg = logits[labels[:, k], k], logits[~labels[:, k], k]
        diff = pos[:, None] - neg[None, :]
        assert scores.per_kind_auc[k] == pytest.approx(((diff > 0) + 0.5 * (diff == 0)).mean())
    pred = logits > 0
    tp, fp, fn = (pred & labels).sum(0), (pred & ~labels).sum(0), (~pred & labels).sum(0)
    assert scores.per_kind_f1 == pytest.approx(list(2 * tp / (2 * tp + fp + fn)))
    perfect = organism_train.score_logits(torch.tensor(labels * 2.0 - 1), torch.tensor(labels))
    assert perfect.mean_auc == 1.0 and perfect.macro_f1 == 1.0 and perfect.exact_match == 1.0


@pytest.mark.slow
def test_training_from_scratch_reproduces_the_shipped_accuracy():
    module, _ = organism_train.train_organism(progress=False)
    scores = organism_train.evaluate(module, n_images=4096)
    shipped = organism.read_config(organism.PACKAGED_DIR)["held_out"]
    assert scores.mean_auc >= 0.98
    assert abs(scores.mean_auc - shipped["mean_auc"]) < 0.005
    assert abs(scores.macro_f1 - shipped["macro_f1"]) < 0.03
