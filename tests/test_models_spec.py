"""Model spec parsing and load_model dispatch."""

from __future__ import annotations

import pytest
import torch

from probe_sae.models import ModelSpec, load_model, parse_spec, register_loader, wrap
from probe_sae.models.spec import _EXTRA_LOADERS


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("open_clip:ViT-B-32", ModelSpec("open_clip", "ViT-B-32")),
        ("open_clip:ViT-B-32/laion2b_s34b_b79k", ModelSpec("open_clip", "ViT-B-32", tag="laion2b_s34b_b79k")),
        ("open_clip:ViT-B-32@/ckpts/a b/model.pt", ModelSpec("open_clip", "ViT-B-32", path="/ckpts/a b/model.pt")),
        ("open_clip:hf-hub:timm/ViT-B-16-SigLIP", ModelSpec("open_clip", "hf-hub:timm/ViT-B-16-SigLIP")),
        ("hf:facebook/dinov2-with-registers-small", ModelSpec("hf", "facebook/dinov2-with-registers-small")),
        ("hf:/tmp/some@dir", ModelSpec("hf", "/tmp/some@dir")),
        ("timm:vit_small_patch14_reg4_dinov2.lvd142m", ModelSpec("timm", "vit_small_patch14_reg4_dinov2.lvd142m")),
        ("timm:vit_tiny_patch16_224@/w/vit.pth", ModelSpec("timm", "vit_tiny_patch16_224", path="/w/vit.pth")),
    ],
)
def test_parse(spec, expected):
    assert parse_spec(spec) == expected
    assert str(expected) == spec


@pytest.mark.parametrize("spec", ["ViT-B-32", "clip:ViT-B-32", "open_clip:", "timm:@/x.pth"])
def test_bad_specs_show_examples(spec):
    with pytest.raises(ValueError, match="open_clip:ViT-B-32"):
        parse_spec(spec)


def test_tag_and_path_together_is_an_error():
    with pytest.raises(ValueError, match="keep one"):
        parse_spec("open_clip:ViT-B-32/openai@/x.pt")


def test_module_instead_of_spec_points_to_wrap():
    with pytest.raises(TypeError, match=r"probe_sae\.wrap"):
        load_model(torch.nn.Linear(2, 2))


def test_registered_loader(monkeypatch):
    monkeypatch.setitem(_EXTRA_LOADERS, "toy", None)
    built = []

    def loader(rest, device, **kwargs):
        built.append((rest, device, kwargs))
        return wrap(torch.nn.Conv2d(3, 4, 2, 2), input_size=(4, 4))

    register_loader("toy", loader)
    assert load_model("toy").input_size == (4, 4)
    load_model("toy:big", device="cpu", width=3)
    assert built == [("", "cpu", {}), ("big", "cpu", {"width": 3})]
    with pytest.raises(ValueError, match="new identifier"):
        register_loader("timm", loader)
