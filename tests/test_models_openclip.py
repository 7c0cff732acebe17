"""open_clip ViT-B-32 and ViT-B-16-SigLIP (real architectures, random weights)."""

from __future__ import annotations

import huggingface_hub.constants
import model_checks as checks
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from probe_sae import hooks
from probe_sae.models import load_model


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_model("open_clip:ViT-B-32")


@pytest.fixture(scope="module")
def siglip():
    torch.manual_seed(0)
    return load_model("open_clip:ViT-B-16-SigLIP")


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _images(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------- ViT-B-32
def test_clip_layout_and_blocks(clip):
    assert clip.layout.n_tokens == 50 and clip.layout.grid == (7, 7)
    assert clip.layout.cls_index == 0 and clip.layout.register_indices == ()
    assert clip.input_size == (224, 224)
    checks.check_blocks_listed(clip, 12, 768)
    assert clip.blocks[3] == "visual.transformer.resblocks.3"
    assert not clip.layers()[clip.blocks[3]].sequence_first  # open_clip 3.x is batch-first
    # a layer whose output is a tuple: nn.MultiheadAttention returns (out, weights)
    attn = clip.layers()["visual.transformer.resblocks.3.attn"]
    assert attn.output.in_tuple and attn.shape == (50, 768)


def test_clip_capture_matches_plain_hooks(clip, pixels):
    checks.check_capture_matches_hooks(clip, pixels)
    name = "visual.transformer.resblocks.3.attn"  # tuple output -> its first element
    got = hooks.capture(clip, pixels, name)[name].per_image()
    assert torch.equal(got, checks.plain_hook_value(clip, name, pixels))


def test_clip_token_selection(clip, pixels):
    checks.check_selections(clip, pixels, cls=0, registers=[], patches=list(range(1, 50)))
    checks.check_positions_against_the_image(clip, pixels)


def test_clip_no_hooks_remain(clip, pixels):
    checks.check_no_hooks_remain(clip, pixels)


def test_clip_early_stop(clip, pixels):
    checks.check_early_stop(clip, pixels)


def test_clip_preprocess_is_open_clips_own(clip):
    _, _, transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    images = _images()
    expected = torch.stack([transform(im) for im in images])
    assert torch.equal(clip.preprocess(images), expected)
    # PIL images go straight in
    with torch.no_grad():
        assert torch.equal(clip(images), clip(expected))


def test_clip_wrong_image_errors_say_what_is_expected(clip):
    with pytest.raises(ValueError, match=r"3×224×224.*got 3×200×200"):
        hooks.capture(clip, torch.zeros(1, 3, 200, 200), 0)
    with pytest.raises(ValueError, match=r"convert\('RGB'\)"):
        clip(torch.zeros(1, 1, 224, 224))
    with pytest.raises(ValueError, match=r"x\[None\]"):
        clip(torch.zeros(3, 224, 224))
    with pytest.raises(ValueError, match="float pixel tensors"):
        clip(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))


def test_clip_text_tower_zero_shot(clip, pixels):
    prompts = ["a photo of a dog", "a photo of a cat", "a diagram"]
    text = clip.encode_text(prompts)
    assert text.shape == (3, 512)
    with torch.no_grad():
        logits = clip.zero_shot_logits(pixels, prompts)
        tokens = open_clip.get_tokenizer("ViT-B-32")(prompts)
        image = F.normalize(clip.module.encode_image(pixels), dim=-1)
        txt = F.normalize(clip.module.encode_text(tokens), dim=-1)
        expected = clip.module.logit_scale.exp() * image @ txt.T
    torch.testing.assert_close(logits, expected)
    assert clip.logit_bias is None


def test_clip_unknown_layer_lists_closest(clip, pixels):
    with pytest.raises(KeyError, match=r"Closest: 'visual\.transformer\.resblocks\.3'"):
        hooks.capture(clip, pixels, "visual.transformer.resblock.3")
    with pytest.raises(ValueError, match=r"12 blocks \(blocks\.0 … blocks\.11\)"):
        hooks.capture(clip, pixels, "blocks.12")
    with pytest.raises(ValueError, match="does not run when images go through"):
        hooks.capture(clip, pixels, "transformer.resblocks.0")  # the text tower


def test_clip_local_checkpoint_loads_through_load_model(clip, tmp_path, pixels):
    torch.manual_seed(123)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(f"open_clip:ViT-B-32@{path}")
    for (name, a), b in zip(model.state_dict().items(), loaded.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(loaded(pixels), model.eval().encode_image(pixels))
        assert not torch.equal(loaded(pixels), clip(pixels))


def test_clip_pretrained_tag_is_checked_before_download():
    with pytest.raises(ValueError, match="laion2b_s34b_b79k"):
        load_model("open_clip:ViT-B-32/not_a_tag")
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_model("open_clip:ViT-B-32@/nonexistent/ckpt.pt")
    with pytest.raises(ValueError, match="ViT-B-32"):
        load_model("open_clip:ViT-B-33")


# ---------------------------------------------------------------- ViT-B-16-SigLIP
def test_siglip_layout_and_blocks(siglip):
    layout = siglip.layout
    assert layout.cls_index is None and layout.n_prefix == 0 and layout.grid == (14, 14)
    checks.check_blocks_listed(siglip, 12, 768)
    assert siglip.blocks[0] == "visual.trunk.blocks.0"


def test_siglip_capture_matches_plain_hooks(siglip, pixels):
    checks.check_capture_matches_hooks(siglip, pixels)


def test_siglip_token_selection(siglip, pixels):
    checks.check_selections(siglip, pixels, cls=None, registers=[], patches=list(range(196)))
    checks.check_positions_against_the_image(siglip, pixels, patch=(13, 0))
    with pytest.raises(ValueError, match=r"no CLS token.*'visual\.trunk\.attn_pool'"):
        hooks.capture(siglip, pixels, 4, tokens="cls")


def test_siglip_no_hooks_remain_and_early_stop(siglip, pixels):
    checks.check_no_hooks_remain(siglip, pixels)
    checks.check_early_stop(siglip, pixels)


def test_siglip_tokenizer_offline_error_names_the_fix(siglip, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    siglip.text._tokenizer = None
    with pytest.raises(RuntimeError, match=r"downloaded once.*precomputed text embeddings"):
        siglip.encode_text(["a dog"])
    # precomputed text embeddings still give SigLIP logits (scale and bias applied)
    text = torch.randn(2, 768)
    with torch.no_grad():
        logits = siglip.zero_shot_logits(torch.zeros(1, 3, 224, 224), text)
        image = F.normalize(siglip.module.encode_image(torch.zeros(1, 3, 224, 224)), dim=-1)
    expected = siglip.module.logit_scale.exp() * image @ F.normalize(text, dim=-1).T + siglip.module.logit_bias
    torch.testing.assert_close(logits, expected)
