"""probe_sae.wrap on arbitrary modules: sequence-first tuple blocks, a convnet, preprocessing."""

from __future__ import annotations

import copy

import model_checks as checks
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from toy_models import TinyConvNet, ToyViT

from probe_sae import hooks
from probe_sae.models import TokenLayout, wrap

LAYOUT = TokenLayout(n_prefix=3, grid=(2, 2), cls_index=0, register_indices=(1, 2), patch_size=(4, 4))


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return wrap(ToyViT(), token_layout=LAYOUT, name="toy")


@pytest.fixture
def pixels():
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _hook_output(module):
    box = {}

    def keep(_m, _a, out):
        box["out"] = out

    handle = module.register_forward_hook(keep)
    return box, handle


def test_sequence_first_tuple_blocks_detected(toy):
    assert toy.input_size == (8, 8)
    assert toy.blocks == ["blocks.0", "blocks.1", "blocks.2"]
    info = toy.layers()["blocks.1"]
    assert info.sequence_first and info.output.in_tuple and info.shape == (7, 16)
    assert not toy.layers()["blocks.1.mlp"].output.in_tuple


def test_capture_is_batch_first_and_matches_plain_hook(toy, pixels):
    box, handle = _hook_output(toy.module.blocks[1])
    try:
        with torch.no_grad():
            toy.module(pixels)
    finally:
        handle.remove()
    reference_BTD = box["out"][0].transpose(0, 1)
    got = hooks.capture(toy, pixels, "blocks.1")["blocks.1"]
    assert torch.equal(got.per_image(), reference_BTD)
    assert got.acts.is_contiguous() and got.acts.shape == (3 * 7, 16)
    checks.check_capture_matches_hooks(toy, pixels)


def test_selection_and_cleanup(toy, pixels):
    checks.check_selections(toy, pixels, cls=0, registers=[1, 2], patches=[3, 4, 5, 6])
    checks.check_positions_against_the_image(toy, pixels, patch=(1, 0))
    checks.check_no_hooks_remain(toy, pixels)
    checks.check_early_stop(toy, pixels)


def test_intervention_on_sequence_first_tuple_output(toy, pixels):
    box, handle = _hook_output(toy.module.blocks[1])
    try:
        with torch.no_grad():
            toy.module(pixels)
            clean = box["out"][0].clone()
            with hooks.replace(toy, "blocks.1", torch.zeros(16), tokens="cls"):
                toy(pixels)
    finally:
        handle.remove()
    edited = box["out"]
    assert isinstance(edited, tuple) and len(edited) == 2  # the tuple is repacked
    assert torch.equal(edited[0][0], torch.zeros(3, 16))  # CLS is position 0 of (T, B, D)
    assert torch.equal(edited[0][1:], clean[1:])


def test_wrapped_module_computes_as_before(pixels):
    torch.manual_seed(0)
    module = ToyViT().eval()
    twin = copy.deepcopy(module)
    model = wrap(module, token_layout=LAYOUT)
    with torch.no_grad():
        assert torch.equal(model(pixels), twin(pixels))
        assert torch.equal(module(pixels), twin(pixels))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_preprocess_measures_input_size_and_takes_pil():
    torch.manual_seed(0)
    preprocess = transforms.Compose([transforms.Resize(8), transforms.CenterCrop(8), transforms.ToTensor()])
    model = wrap(ToyViT(), preprocess=preprocess, token_layout=LAYOUT)
    assert model.input_size == (8, 8)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    with torch.no_grad():
        assert torch.equal(model([image, image]), model(torch.stack([preprocess(image)] * 2)))


def test_wrap_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"input_size=\(H, W\)"):
        wrap(TinyConvNet())
    model = wrap(TinyConvNet(), input_size=8)
    with pytest.raises(ValueError, match="preprocess="):
        model(Image.new("RGB", (8, 8)))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        wrap(lambda x: x)


def test_convnet_spatial_capture_and_multi_call_error():
    torch.manual_seed(0)
    model = wrap(TinyConvNet(), input_size=(8, 8), forward=lambda m, x: m(x))
    pixels = torch.randn(2, 3, 8, 8)
    info = model.layers()["stages.1"]
    assert info.output.kind == "spatial" and info.shape == (8, 4, 4)
    got = hooks.capture(model, pixels, "stages.1")["stages.1"]
    box, handle = _hook_output(model.module.stages[1])
    try:
        with torch.no_grad():
            model(pixels)
    finally:
        handle.remove()
    assert torch.equal(got.per_image(), box["out"].flatten(2).transpose(1, 2))
    assert got.token_index.tolist() == list(range(16)) * 2
    with pytest.raises(ValueError, match="no known token layout"):
        hooks.capture(model, pixels, "stages.1", tokens="cls")
    with pytest.raises(ValueError, match="runs 2 times per forward"):
        hooks.capture(model, pixels, "act")
    assert model.blocks == ["stages.0", "stages.1"]


def test_failing_dry_run_leaves_no_hooks():
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x).view(-1, 5)  # cannot reshape: raises

    model = wrap(Broken(), input_size=(4, 4))
    with pytest.raises(RuntimeError):
        model.layers()
    checks.assert_clean(model)
