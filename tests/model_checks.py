"""Checks every model family must pass (imported by tests/test_models_*.py).

The reference for a captured activation is what a plain ``register_forward_hook`` (or
``register_forward_pre_hook``) on the same module sees in an ordinary forward; it must match
bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from probe_sae import hooks
from probe_sae.models import VisionModel
from probe_sae.models.runner import torch_hooks_clean, trace_state_clean


def plain_hook_value(model: VisionModel, name: str, pixels: Tensor, where: str = "output") -> Tensor:
    """(B, T, D) batch-first value of module ``name`` seen by a plain torch hook in a normal forward."""
    module = model.module.get_submodule(name)
    box: dict[str, Tensor] = {}

    def first(value):
        return value[0] if isinstance(value, (tuple, list)) else value

    def on_output(_module, _args, out) -> None:
        box.setdefault("v", first(out).clone())

    def on_input(_module, args, kwargs) -> None:
        box.setdefault("v", (args[0] if args else next(iter(kwargs.values()))).clone())

    if where == "output":
        handle = module.register_forward_hook(on_output)
    else:
        handle = module.register_forward_pre_hook(on_input, with_kwargs=True)
    assert not model.interventions, "the reference needs a forward without interventions"
    try:
        with torch.no_grad():
            model(pixels)  # with nothing attached: the module's own forward, untraced
    finally:
        handle.remove()
    value = box["v"]
    info = model.layers()[name]
    site = info.output if where == "output" else info.input
    return value.transpose(0, 1) if site.sequence_first else value


def check_blocks_listed(model: VisionModel, n_blocks: int, width: int) -> None:
    layers = model.layers()
    assert len(model.blocks) == n_blocks
    order = [layers[name].order_out for name in model.blocks]
    assert order == sorted(order), "blocks must be listed in execution order"
    for name in model.blocks:
        assert layers[name].shape == (model.layout.n_tokens, width)
        assert layers[name].output.kind == "tokens"
    assert model.resolve("blocks.-1") == model.blocks[-1]
    assert model.resolve(0) == model.blocks[0]


def check_capture_matches_hooks(model: VisionModel, pixels: Tensor) -> None:
    last = len(model.blocks) - 1
    first_name, last_name = model.blocks[0], model.blocks[last]
    references = {}
    for index, name, where in ((0, first_name, "output"), (0, first_name, "input"), (last, last_name, "output")):
        reference = plain_hook_value(model, name, pixels, where)
        got = hooks.capture(model, pixels, index, where=where)[f"blocks.{index}"]
        assert got.layer == name
        assert got.per_image().shape == reference.shape
        assert torch.equal(got.per_image(), reference), f"{name} {where} differs from a plain hook"
        references[(name, where)] = reference
    # several layers in one pass, requested out of execution order
    both = hooks.capture(model, pixels, [last_name, first_name])
    assert torch.equal(both[first_name].per_image(), references[(first_name, "output")])
    assert torch.equal(both[last_name].per_image(), references[(last_name, "output")])


def check_selections(
    model: VisionModel,
    pixels: Tensor,
    cls: int | None,
    registers: list[int],
    patches: list[int],
) -> None:
    batch = pixels.shape[0]
    layer = model.blocks[1]
    full = hooks.capture(model, pixels, layer)[layer].per_image()
    n_tokens = full.shape[1]
    assert n_tokens == (cls is not None) + len(registers) + len(patches)
    expected = {"patches": patches, "registers": registers, "cls": [] if cls is None else [cls]}
    for selection, positions in expected.items():
        if not positions:
            with pytest.raises(ValueError, match=f"no {'CLS' if selection == 'cls' else 'register'}"):
                hooks.capture(model, pixels, layer, tokens=selection)
            continue
        got = hooks.capture(model, pixels, layer, tokens=selection)[layer]
        assert got.token_index.tolist() == positions * batch
        assert got.image_index.tolist() == [b for b in range(batch) for _ in positions]
        assert torch.equal(got.per_image(), full[:, positions])
    got = hooks.capture(model, pixels, layer, tokens=[0, -1])[layer]
    assert got.token_index.tolist() == [0, n_tokens - 1] * batch
    assert torch.equal(got.per_image(), full[:, [0, n_tokens - 1]])


def assert_clean(model: VisionModel) -> None:
    assert torch_hooks_clean(model.module), "a torch hook is still registered"
    assert trace_state_clean(model.envoy), "nnsight still holds trace workers"
    assert not model.interventions
    assert hooks.is_clean(model)


def check_no_hooks_remain(model: VisionModel, pixels: Tensor) -> None:
    assert_clean(model)
    with torch.no_grad():
        before = model(pixels)
    hooks.capture(model, pixels, [0, 1], tokens="patches")
    assert_clean(model)
    # an exception inside the with block
    with pytest.raises(RuntimeError, match="inside the block"), hooks.intervene(model, 0, lambda x: x + 1):
        model(pixels)
        raise RuntimeError("inside the block")
    assert_clean(model)
    # an exception raised by the intervention during the traced forward

    def boom(x: Tensor) -> Tensor:
        raise ArithmeticError("inside the forward")

    with pytest.raises(ArithmeticError, match="inside the forward"), hooks.intervene(model, 1, boom):
        hooks.capture(model, pixels, -1)
    assert_clean(model)
    # the model computes exactly as before
    with torch.no_grad():
        assert torch.equal(model(pixels), before)


def check_early_stop(model: VisionModel, pixels: Tensor) -> None:
    model.layers()  # the one-off dry run runs the whole model
    calls: list[int] = []
    handle = model.module.get_submodule(model.blocks[-1]).register_forward_hook(lambda *a: calls.append(1))
    try:
        hooks.capture(model, pixels, 0)
        assert calls == [], "the forward ran past the captured layer"
        hooks.capture(model, pixels, 0, stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()


def check_positions_against_the_image(model: VisionModel, pixels: Tensor, patch: tuple[int, int] = (1, 2)) -> None:
    """Ground truth for the layout, independent of it: at the input of block 0, CLS and register
    tokens do not depend on the image, and editing the pixels of one patch changes exactly the
    token at that patch's row-major grid position."""
    layout = model.layout.for_image_size(*pixels.shape[-2:])
    prefix = ([layout.cls_index] if layout.cls_index is not None else []) + list(layout.register_indices)
    patches = list(range(layout.n_prefix, layout.n_tokens))

    def block0_input(x: Tensor) -> Tensor:
        return hooks.capture(model, x, 0, where="input")["blocks.0"].per_image()

    base = block0_input(pixels)
    other = block0_input(0.5 * pixels.flip(-1) + 0.3)
    for position in prefix:
        assert torch.equal(base[:, position], other[:, position]), f"token {position} depends on the image"
    assert bool((base[:, patches] != other[:, patches]).any(-1).all()), "a patch token ignores the image"
    (r, c), (h, w) = patch, layout.grid
    ph, pw = pixels.shape[-2] // h, pixels.shape[-1] // w
    edited = pixels.clone()
    edited[:, :, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] += 1.0
    changed = (block0_input(edited) != base).any(-1)  # (B, T)
    expected = torch.zeros_like(changed)
    expected[:, layout.n_prefix + r * w + c] = True
    assert torch.equal(changed, expected), "editing one patch changed other tokens"
