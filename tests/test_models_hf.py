"""Hugging Face transformers models from small random configs, saved with ``save_pretrained`` and
loaded back through ``load_model("hf:<dir>")`` (the offline half of the pretrained path)."""

from __future__ import annotations

import json
import warnings

import model_checks as checks
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from PIL import Image

from probe_sae import hooks
from probe_sae.models import load_model

SMALL = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    image_size=32, patch_size=8,
)
TEXT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    vocab_size=60, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
)
# name -> (config class, model class, extra config, expected layout: cls, registers, n_prefix)
VISION = {
    "clip": (T.CLIPVisionConfig, T.CLIPVisionModel, {}, (0, [], 1)),
    "dinov2": (T.Dinov2Config, T.Dinov2Model, {}, (0, [], 1)),
    "dinov2_reg4": (T.Dinov2WithRegistersConfig, T.Dinov2WithRegistersModel, {"num_register_tokens": 4}, (0, [1, 2, 3, 4], 5)),
    "siglip": (T.SiglipVisionConfig, T.SiglipVisionModel, {}, (None, [], 0)),
}


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no image processor saved" for directories without one
        return load_model(f"hf:{path}")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (original model, loaded VisionModel) for each vision-only family."""
    out = {}
    for name, (config_cls, model_cls, extra, _) in VISION.items():
        torch.manual_seed(0)
        original = model_cls(config_cls(**SMALL, **extra)).eval()
        path = tmp_path_factory.mktemp(name)
        original.save_pretrained(path)
        out[name] = (original, _load(path))
    return out


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _tiny_clip_tokenizer(path) -> None:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    T.CLIPTokenizer(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt")).save_pretrained(path)


@pytest.mark.parametrize("name", list(VISION))
def test_class_chosen_from_config_and_weights_loaded(saved, pixels, name):
    original, model = saved[name]
    assert type(model.module) is VISION[name][1]
    for (key, a), b in zip(original.state_dict().items(), model.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    with torch.no_grad():
        assert torch.equal(model(pixels), original(pixel_values=pixels).pooler_output)


@pytest.mark.parametrize("name", list(VISION))
def test_layout_and_blocks(saved, name):
    _, model = saved[name]
    cls, registers, n_prefix = VISION[name][3]
    assert model.layout.cls_index == cls
    assert list(model.layout.register_indices) == registers
    assert model.layout.n_prefix == n_prefix and model.layout.grid == (4, 4)
    checks.check_blocks_listed(model, 2, 64)


@pytest.mark.parametrize("name", list(VISION))
def test_capture_matches_plain_hooks(saved, pixels, name):
    checks.check_capture_matches_hooks(saved[name][1], pixels)


@pytest.mark.parametrize("name", list(VISION))
def test_token_selection(saved, pixels, name):
    cls, registers, n_prefix = VISION[name][3]
    checks.check_selections(saved[name][1], pixels, cls, registers, list(range(n_prefix, n_prefix + 16)))
    checks.check_positions_against_the_image(saved[name][1], pixels)


@pytest.mark.parametrize("name", list(VISION))
def test_no_hooks_remain_and_early_stop(saved, pixels, name):
    checks.check_no_hooks_remain(saved[name][1], pixels)
    checks.check_early_stop(saved[name][1], pixels)


def test_dinov2_takes_other_sizes_and_clip_does_not(saved):
    model = saved["dinov2_reg4"][1]
    big = torch.randn(1, 3, 48, 40)
    got = hooks.capture(model, big, 1, tokens="patches")["blocks.1"]
    assert got.token_index.tolist() == list(range(5, 5 + 6 * 5))
    full = hooks.capture(model, big, 1)["blocks.1"].per_image()
    assert torch.equal(got.per_image(), full[:, 5:])
    checks.check_positions_against_the_image(model, big)
    with pytest.raises(ValueError, match="multiples of its patch size 8×8"):
        model(torch.randn(1, 3, 44, 40))
    with pytest.raises(ValueError, match=r"3×32×32; got 3×48×40"):
        saved["clip"][1](big)


def test_saved_image_processor_is_used(tmp_path):
    torch.manual_seed(0)
    T.Dinov2Model(T.Dinov2Config(**SMALL)).save_pretrained(tmp_path)
    processor = T.BitImageProcessor(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the saved processor is found
        model = load_model(f"hf:{tmp_path}")
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (50, 70, 3), dtype=np.uint8)) for i in range(2)]
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(model.preprocess(images), expected)
    assert model.input_size == (32, 32)


def test_missing_processor_falls_back_to_family_defaults(tmp_path):
    T.SiglipVisionModel(T.SiglipVisionConfig(**SMALL)).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="siglip defaults at 32px"):
        model = load_model(f"hf:{tmp_path}")
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    assert torch.allclose(model.preprocess(white), torch.ones(1, 3, 32, 32))  # SigLIP: (x - .5) / .5


def test_clip_model_text_tower_and_zero_shot(tmp_path, pixels):
    torch.manual_seed(0)
    config = T.CLIPConfig(vision_config=SMALL, text_config=TEXT, projection_dim=16)
    original = T.CLIPModel(config).eval()
    original.save_pretrained(tmp_path)
    no_tokenizer = _load(tmp_path)
    with pytest.raises(RuntimeError, match="holds no tokenizer files"):
        no_tokenizer.encode_text(["a dog"])
    _tiny_clip_tokenizer(tmp_path)
    model = _load(tmp_path)
    assert model.blocks == ["vision_model.encoder.layers.0", "vision_model.encoder.layers.1"]
    checks.check_capture_matches_hooks(model, pixels)
    prompts = ["a dog", "a cat"]
    with torch.no_grad():
        logits = model.zero_shot_logits(pixels, prompts)
        tok = T.AutoTokenizer.from_pretrained(tmp_path)(prompts, padding=True, return_tensors="pt")
        text = original.get_text_features(**tok).pooler_output
        image = original.get_image_features(pixel_values=pixels).pooler_output
    expected = original.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(logits, expected)
    assert model.encode_text(prompts).shape == (2, 16)


def test_siglip_model_logits_use_scale_and_bias(tmp_path, pixels):
    torch.manual_seed(0)
    config = T.SiglipConfig(vision_config=SMALL, text_config=TEXT)
    original = T.SiglipModel(config).eval()
    with torch.no_grad():
        original.logit_bias.fill_(-3.0)
    original.save_pretrained(tmp_path)
    model = _load(tmp_path)
    assert model.layout.cls_index is None
    with pytest.raises(ValueError, match=r"no CLS token.*'vision_model\.head'"):
        hooks.capture(model, pixels, 0, tokens="cls")
    text = torch.randn(3, 64)
    with torch.no_grad():
        logits = model.zero_shot_logits(pixels, text)
        image = original.get_image_features(pixel_values=pixels).pooler_output
    expected = original.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T - 3.0
    torch.testing.assert_close(logits, expected)


def test_unsupported_or_missing_checkpoint_names_the_fix(tmp_path):
    T.ViTModel(T.ViTConfig(**SMALL)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'vit' model.*probe_sae\.wrap"):
        load_model(f"hf:{tmp_path}")
    with pytest.raises(OSError, match="save_pretrained"):
        load_model(f"hf:{tmp_path / 'missing'}")
