"""probe_sae.hooks: interventions (replace / add / edit), composition, capture options, cleanup."""

from __future__ import annotations

import model_checks as checks
import pytest
import torch
from toy_models import ToyViT

from probe_sae import hooks
from probe_sae.models import Intervention, TokenLayout, wrap

LAYOUT = TokenLayout(n_prefix=3, grid=(2, 2), cls_index=0, register_indices=(1, 2), patch_size=(4, 4))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return wrap(ToyViT(depth=4), token_layout=LAYOUT, name="toy")


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _acts(model, pixels, layer="blocks.1", **kwargs):
    return hooks.capture(model, pixels, layer, **kwargs)[layer].per_image()


def test_add_touches_only_selected_tokens(model, pixels):
    clean = _acts(model, pixels)
    delta = torch.randn(16)
    with hooks.add(model, "blocks.1", delta, scale=2.0, tokens="registers"):
        edited = _acts(model, pixels)
    assert torch.equal(edited[:, 1:3], clean[:, 1:3] + 2.0 * delta)
    assert torch.equal(edited[:, [0, 3, 4, 5, 6]], clean[:, [0, 3, 4, 5, 6]])
    assert torch.equal(_acts(model, pixels), clean)  # gone after the block


def test_replace_and_edit_propagate_downstream_and_are_undone(model, pixels):
    with torch.no_grad():
        clean_out = model(pixels)
    clean_later = _acts(model, pixels, "blocks.3")
    with hooks.replace(model, 1, torch.zeros(16), tokens="patches"):
        assert torch.equal(_acts(model, pixels)[:, 3:], torch.zeros(2, 4, 16))
        later = _acts(model, pixels, "blocks.3")
        assert not torch.equal(later[:, 3:], clean_later[:, 3:])
        assert torch.equal(later[:, :3], clean_later[:, :3])  # toy blocks do not mix tokens
    with hooks.replace(model, 1, torch.zeros(16), tokens="cls"), torch.no_grad():
        assert not torch.equal(model(pixels), clean_out)  # the head reads CLS
    with hooks.intervene(model, "blocks.2", lambda x: -x), torch.no_grad():
        assert not torch.equal(model(pixels), clean_out)
    with torch.no_grad():
        assert torch.equal(model(pixels), clean_out)
    checks.assert_clean(model)


def test_nested_interventions_compose_in_entry_order(model, pixels):
    clean = _acts(model, pixels)
    plus_one, double = (lambda x: x + 1), (lambda x: x * 2)
    with hooks.intervene(model, 1, plus_one), hooks.intervene(model, 1, double):
        assert torch.equal(_acts(model, pixels), (clean + 1) * 2)
        assert [iv.fn for iv in hooks.active(model)] == [plus_one, double]
    with hooks.intervene(model, 1, double), hooks.intervene(model, 1, plus_one):
        assert torch.equal(_acts(model, pixels), clean * 2 + 1)
    checks.assert_clean(model)


def test_inner_block_error_keeps_outer_intervention(model, pixels):
    clean = _acts(model, pixels)
    with hooks.intervene(model, 1, lambda x: x + 1):
        with pytest.raises(KeyError), hooks.intervene(model, 1, lambda x: x * 0):
            raise KeyError("inner")
        assert torch.equal(_acts(model, pixels), clean + 1)
    checks.assert_clean(model)


def test_interventions_at_several_layers_and_on_inputs(model, pixels):
    clean_in = _acts(model, pixels, "blocks.2", where="input")
    clean_out1 = _acts(model, pixels, "blocks.1")
    assert torch.equal(clean_in, clean_out1)  # block 2 takes block 1's hidden states
    with hooks.intervene(model, "blocks.2", lambda x: x + 3, where="input"):
        assert torch.equal(_acts(model, pixels, "blocks.2", where="input"), clean_out1 + 3)
        assert torch.equal(_acts(model, pixels, "blocks.1"), clean_out1)  # output of block 1 untouched


def test_bad_intervention_functions_raise_and_leave_nothing(model, pixels):
    with (
        pytest.raises(ValueError, match=r"returned shape \(2, 16\).*\(2, 7, 16\)"),
        hooks.intervene(model, 1, lambda x: x[:, 0]),
    ):
        model(pixels)
    checks.assert_clean(model)
    with pytest.raises(TypeError, match="must return a tensor"), hooks.intervene(model, 1, lambda x: None):
        model(pixels)
    checks.assert_clean(model)
    with pytest.raises(TypeError, match=r"hooks\.replace"), hooks.intervene(model, 1, torch.zeros(16)):
        pass
    with pytest.raises(ValueError, match="no register tokens"):
        no_regs = wrap(ToyViT(registers=0), token_layout=TokenLayout(1, (2, 2), 0, (), (4, 4)))
        with hooks.add(no_regs, 1, torch.ones(16), tokens="registers"):
            pass
    checks.assert_clean(no_regs)


def test_public_site_and_intervention_api(model, pixels):
    """What hooks and interventions build on: ``site``, ``add_intervention`` /
    ``remove_intervention`` and the read-only ``interventions``."""
    site = model.site("blocks.1")
    assert site is model.site(1) and (site.kind, site.width) == ("tokens", 16)
    assert model.site(2, "input").n_tokens == 7
    clean = _acts(model, pixels)
    entry = model.add_intervention(Intervention("blocks.1", "output", lambda x: x + 1, "cls"))
    try:
        assert model.interventions == (entry,) and hooks.active(model) == [entry]
        edited = _acts(model, pixels)
        assert torch.equal(edited[:, 0], clean[:, 0] + 1)
        assert torch.equal(edited[:, 1:], clean[:, 1:])
    finally:
        model.remove_intervention(entry)
    assert model.interventions == ()
    model.remove_intervention(entry)  # removing twice is harmless
    # a block alias is stored under the full module name; bad selections fail before attaching
    aliased = model.add_intervention(Intervention("blocks.-1", "output", lambda x: x))
    assert aliased.layer == "blocks.3" and model.interventions == (aliased,)
    model.remove_intervention(aliased)
    with pytest.raises(ValueError, match="out of range"):
        model.add_intervention(Intervention("blocks.1", "output", lambda x: x, [9]))
    checks.assert_clean(model)


def test_capture_grad_option(model, pixels):
    got = hooks.capture(model, pixels, 1, grad=True)["blocks.1"]
    assert got.acts.requires_grad
    got.acts.sum().backward()
    assert model.module.blocks[0].mlp.weight.grad is not None
    assert not hooks.capture(model, pixels, 1)["blocks.1"].acts.requires_grad


def test_capture_keys_and_argument_errors(model, pixels):
    out = hooks.capture(model, pixels, [2, "blocks.0", "blocks.1.mlp"], tokens="cls")
    assert list(out) == ["blocks.2", "blocks.0", "blocks.1.mlp"]
    assert out["blocks.1.mlp"].layer == "blocks.1.mlp"
    with pytest.raises(ValueError, match="at least one layer"):
        hooks.capture(model, pixels, [])
    with pytest.raises(ValueError, match="'input' or 'output'"):
        hooks.capture(model, pixels, 1, where="middle")
    with pytest.raises(ValueError, match="Unknown token selection"):
        hooks.capture(model, pixels, 1, tokens="everything")
    with pytest.raises(ValueError, match="out of range"):
        hooks.capture(model, pixels, 1, tokens=[7])
    with pytest.raises(KeyError, match=r"Closest: 'blocks\.1\.mlp'"):
        hooks.capture(model, pixels, "blocks.1.mpl")
    checks.assert_clean(model)


def test_early_stop_skips_the_rest_of_the_forward(model, pixels):
    model.layers()  # the one-off dry run runs the whole model
    seen = []
    handle = model.module.head.register_forward_hook(lambda *a: seen.append("head"))
    try:
        hooks.capture(model, pixels, [0, 2])
        assert seen == []
        with hooks.intervene(model, 3, lambda x: x):  # an edit after the deepest read is not reached
            hooks.capture(model, pixels, 1)
        assert seen == []
        hooks.capture(model, pixels, 1, stop_early=False)
        assert seen == ["head"]
    finally:
        handle.remove()
    checks.assert_clean(model)
