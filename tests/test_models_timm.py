"""timm ViTs (random weights): vit_tiny_patch16_224 as timm builds it, and one with registers."""

from __future__ import annotations

import model_checks as checks
import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image

from probe_sae import hooks
from probe_sae.models import load_model


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return load_model("timm:vit_tiny_patch16_224")


@pytest.fixture(scope="module")
def vit_reg():
    torch.manual_seed(0)
    return load_model("timm:vit_tiny_patch16_224", img_size=64, reg_tokens=4)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_layout_and_blocks(vit, vit_reg):
    assert vit.layout.n_tokens == 197 and vit.layout.cls_index == 0 and vit.layout.grid == (14, 14)
    checks.check_blocks_listed(vit, 12, 192)
    assert vit.blocks[0] == "blocks.0"
    assert vit_reg.layout.register_indices == (1, 2, 3, 4) and vit_reg.layout.n_tokens == 5 + 16
    assert vit_reg.input_size == (64, 64)


def test_capture_matches_plain_hooks(vit, pixels):
    checks.check_capture_matches_hooks(vit, pixels)


def test_token_selection(vit, vit_reg, pixels):
    checks.check_selections(vit, pixels, cls=0, registers=[], patches=list(range(1, 197)))
    small = torch.randn(2, 3, 64, 64)
    checks.check_selections(vit_reg, small, cls=0, registers=[1, 2, 3, 4], patches=list(range(5, 21)))
    checks.check_positions_against_the_image(vit, pixels, patch=(3, 11))
    checks.check_positions_against_the_image(vit_reg, small)


def test_no_hooks_remain_and_early_stop(vit, pixels):
    checks.check_no_hooks_remain(vit, pixels)
    checks.check_early_stop(vit, pixels)


def test_preprocess_is_timms_own(vit):
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=vit.module))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 300, 3), dtype=np.uint8))
    assert torch.equal(vit.preprocess(image), transform(image)[None])


def test_local_checkpoint_loads_through_load_model(vit, tmp_path, pixels):
    torch.manual_seed(7)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    path = tmp_path / "vit_tiny.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(f"timm:vit_tiny_patch16_224@{path}")
    for (name, a), b in zip(model.state_dict().items(), loaded.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(loaded(pixels), model(pixels))


def test_unknown_model_lists_closest():
    with pytest.raises(ValueError, match="Closest: vit_tiny_patch16_224"):
        load_model("timm:vit_tiny_patch16_22")


def test_capture_head_vector_layer(vit, pixels):
    got = hooks.capture(vit, pixels, "head")["head"]
    assert got.acts.shape == (2, 1000) and got.token_index.tolist() == [0, 0]
    with torch.no_grad():
        assert torch.equal(got.acts, vit(pixels))
    with pytest.raises(ValueError, match="needs a layer with the model's 197 tokens"):
        hooks.capture(vit, pixels, "head", tokens="cls")
