"""probe_sae.interventions: splice (every SAE family), steer, concept maps, hook cleanup.

On a real timm ViT (random weights, 3 blocks, 2 registers, a non-square 4×6 patch grid) with
SAEs of every family trained for a few Adam steps on its block-1 tokens.
"""

from __future__ import annotations

import itertools

import model_checks as checks
import pytest
import torch
from sae_fitting import fit_sae, tiny_timm_vit

from probe_sae import build_sae, hooks, kmeans
from probe_sae.interventions import (
    concept_maps,
    edit_codes,
    fold_patches,
    pixel_mask_to_grid,
    splice,
    steer,
)
from probe_sae.metrics.reconstruction import fvu
from probe_sae.models import load_model

FAMILIES = ["relu", "topk", "batchtopk", "jumprelu", "mp", "asae", "rasae", "matryoshka", "matryoshka_rasae"]
LAYER = "blocks.1"
D, C = 192, 256


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vit():
    return tiny_timm_vit()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 48, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pixels():
    return _images(4, 1)


@pytest.fixture(scope="module")
def acts(vit):
    return hooks.capture(vit, _images(64, 2), LAYER)[LAYER].acts  # (64·27, 192)


def make_sae(family: str, acts, n_concepts: int = C, k: int = 8, steps: int = 30):
    options = {} if family in ("relu", "jumprelu") else {"k": k}
    candidates = kmeans(acts, n_concepts, seed=0) if family.endswith("asae") else None
    sae = build_sae(family, acts.shape[1], n_concepts, candidates=candidates, seed=0, **options)
    return fit_sae(sae, acts, steps)


@pytest.fixture(scope="module")
def saes(acts):
    return {family: make_sae(family, acts) for family in FAMILIES}


def layer_value(model, images, tokens="all"):
    return hooks.capture(model, images, LAYER, tokens=tokens)[LAYER].per_image()


# ------------------------------------------------------------------------------------- splice
@pytest.mark.parametrize("family", FAMILIES)
def test_error_term_reproduces_the_clean_output_for_every_family(vit, saes, pixels, family):
    sae = saes[family]
    with torch.no_grad():
        clean = vit(pixels)
        with splice(vit, LAYER, sae, error_term=True) as spliced:
            kept = vit(pixels)
        with splice(vit, LAYER, sae) as plain:
            changed = vit(pixels)
    checks.assert_clean(vit)
    torch.testing.assert_close(kept, clean, rtol=0, atol=1e-5)
    assert (changed - clean).abs().max() > 1e-2, "splicing without the error term changed nothing"
    # what the splice recorded is the SAE's own encoding of the clean layer value
    x_BTD = layer_value(vit, pixels)
    x_ND = x_BTD.reshape(-1, D)
    with torch.no_grad():
        codes = sae.encode(x_ND)
        x_hat = sae.decode(codes)
    for record in (spliced.last, plain.last):
        torch.testing.assert_close(record.codes_BTC.reshape(-1, C), codes)
        torch.testing.assert_close(record.error_BTD.reshape(-1, D), x_ND - x_hat)
    # without the error term the layer carries the reconstruction
    with splice(vit, LAYER, sae):
        torch.testing.assert_close(layer_value(vit, pixels).reshape(-1, D), x_hat)


def test_gradients_flow_through_the_codes(vit, saes, pixels):
    """With the error term the output is unchanged but depends on the layer through the codes:
    gradients reach the SAE (decoder and encoder) and, through the encoder, earlier blocks."""
    sae = saes["topk"]
    vit.module.zero_grad()
    sae.zero_grad()
    with splice(vit, LAYER, sae, error_term=True):
        vit(pixels).pow(2).sum().backward()
    assert sae.decoder.weight.grad.abs().sum() > 0 and sae.W_enc.grad.abs().sum() > 0
    assert vit.module.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert vit.module.blocks[2].mlp.fc1.weight.grad.abs().sum() > 0
    # the error term is a constant: with codes that ignore the input (W_enc = 0, b_enc = 1)
    # the output is still the clean one, yet nothing before the layer gets a gradient
    blind = build_sae("relu", D, 16, seed=0)
    with torch.no_grad():
        blind.W_enc.zero_()
        blind.b_enc.fill_(1.0)
        clean = vit(pixels)
    vit.module.zero_grad()
    with splice(vit, LAYER, blind, error_term=True):
        out = vit(pixels)
        out.pow(2).sum().backward()
    torch.testing.assert_close(out.detach(), clean, atol=1e-5, rtol=0)
    assert (
        vit.module.blocks[0].mlp.fc1.weight.grad is None
        or vit.module.blocks[0].mlp.fc1.weight.grad.abs().sum() == 0
    )
    assert (
        blind.decoder.weight.grad.abs().sum() > 0
        and vit.module.blocks[2].mlp.fc1.weight.grad.abs().sum() > 0
    )
    vit.module.zero_grad()
    sae.zero_grad()
    checks.assert_clean(vit)


def test_mp_codes_are_accumulated_coefficients(vit, acts, pixels):
    """MP-SAE codes in a splice are the summed pursuit coefficients: they decode to the pursuit's
    own reconstruction, also with another number of steps given at inference."""
    sae = make_sae("mp", acts, n_concepts=64, k=6, steps=10)
    x_ND = layer_value(vit, pixels).reshape(-1, D)
    for k in (6, 24):
        with torch.no_grad(), splice(vit, LAYER, sae, encode_options={"k": k}) as spliced:
            vit(pixels)
        codes_NC = spliced.last.codes_BTC.reshape(-1, 64)
        with torch.no_grad():
            pursuit = sae(x_ND, k=k)
        torch.testing.assert_close(sae.decode(codes_NC), pursuit.x_hat, atol=1e-4, rtol=1e-4)
        assert bool(((codes_NC != 0).sum(1) <= k).all())
    # with 24 steps over 64 atoms some atom is chosen twice; its code is the sum of both steps
    sparse = sae._encode(sae.normalize(x_ND) - sae.b_pre, k=24)
    repeats = sparse.indices.view(-1, 24)
    assert any(len(set(row.tolist())) < 24 for row in repeats)
    torch.testing.assert_close(sparse.to_dense(), codes_NC)


def test_output_change_shrinks_as_fvu_falls(vit):
    """SAEs trained to lower FVU change the spliced model's output less: TopK SAEs trained with
    k = 2, 16, 128, and one MP-SAE run with more pursuit steps at inference."""
    train = hooks.capture(vit, _images(96, 3), LAYER, tokens="patches")[LAYER].acts
    test_pixels = _images(16, 4)
    test = hooks.capture(vit, test_pixels, LAYER, tokens="patches")[LAYER].acts
    with torch.no_grad():
        clean = vit(test_pixels)

    def change(sae, **options) -> tuple[float, float]:
        with torch.no_grad():
            error = fvu(test, sae.decode(sae.encode(test, **options)))
            with splice(vit, LAYER, sae, tokens="patches", encode_options=options):
                out = vit(test_pixels)
        return error, float((out - clean).norm() / clean.norm())

    trained = [
        change(fit_sae(build_sae("topk", D, 384, k=k, seed=0), train, steps=100)) for k in (2, 16, 128)
    ]
    mp = fit_sae(build_sae("mp", D, 384, k=8, seed=0), train, steps=60)
    pursued = [change(mp, k=k) for k in (1, 4, 16, 64)]
    for results in (trained, pursued):
        fvus, changes = zip(*results, strict=True)
        assert all(a > b for a, b in itertools.pairwise(fvus)), f"FVU not falling: {fvus}"
        assert all(a > b for a, b in itertools.pairwise(changes)), (
            f"output change does not shrink with FVU: {results}"
        )
    assert trained[-1][1] < 0.6 * trained[0][1] and pursued[-1][1] < 0.6 * pursued[0][1]


def _hf(kind: str, folder) -> object:
    import warnings

    import transformers as T

    small = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    )
    config_cls, model_cls, extra = {
        "clip": (T.CLIPVisionConfig, T.CLIPVisionModel, {}),
        "dinov2_reg": (
            T.Dinov2WithRegistersConfig,
            T.Dinov2WithRegistersModel,
            {"num_register_tokens": 4},
        ),
        "siglip": (T.SiglipVisionConfig, T.SiglipVisionModel, {}),
    }[kind]
    torch.manual_seed(0)
    model_cls(config_cls(**small, **extra)).eval().save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(f"hf:{folder}")


def _toy():
    from toy_models import ToyViT

    from probe_sae.models import TokenLayout, wrap

    torch.manual_seed(0)
    layout = TokenLayout(
        n_prefix=3, grid=(2, 2), cls_index=0, register_indices=(1, 2), patch_size=(4, 4)
    )
    return wrap(ToyViT(depth=3), token_layout=layout, name="toy")  # (T, B, D) tuple-output blocks


@pytest.mark.parametrize(
    "family", ["open_clip", "hf_clip", "hf_dinov2_reg", "hf_siglip", "wrap_seq_first", "organism"]
)
def test_splice_and_steer_on_every_model_family(family, tmp_path):
    """Error-term splice is exact, plain splice and steering change the output, nothing stays
    attached — on every loader (and sequence-first, tuple-output blocks via wrap)."""
    if family == "open_clip":
        model = load_model("open_clip:ViT-B-32", force_image_size=64)
    elif family.startswith("hf_"):
        model = _hf(family[3:], tmp_path)
    elif family == "wrap_seq_first":
        model = _toy()
    else:
        from probe_sae import organism

        model = organism.load_organism(train_if_missing=False)
    h, w = model.input_size
    images = torch.rand(8, 3, h, w, generator=torch.Generator().manual_seed(0))
    layer = model.blocks[0]
    acts = hooks.capture(model, images, layer)[layer].acts
    sae = make_sae("topk", acts, n_concepts=64, k=4, steps=10)
    with torch.no_grad():
        clean = model(images[:2])
        with splice(model, layer, sae, error_term=True):
            kept = model(images[:2])
        with splice(model, layer, sae):
            spliced = model(images[:2])
        steered = steer(model, layer, sae, {int(sae.encode(acts).count_nonzero(0).argmax()): 5.0})(
            images[:2]
        )
    torch.testing.assert_close(kept, clean, atol=1e-5, rtol=0)
    assert (spliced - clean).abs().max() > 1e-4 and (steered - clean).abs().max() > 1e-4
    checks.assert_clean(model)


# -------------------------------------------------------------------------------------- steer
@pytest.mark.parametrize("family", ["topk", "mp", "rasae", "jumprelu", "matryoshka"])
@pytest.mark.parametrize("mode", ["add", "scale", "clamp", "ablate"])
def test_steer_modes_edit_the_codes_and_nothing_else(vit, saes, pixels, family, mode):
    sae = saes[family]
    x_BTD = layer_value(vit, pixels)
    x_ND = x_BTD.reshape(-1, D)
    with torch.no_grad():
        codes = sae.encode(x_ND)
    active = codes.count_nonzero(0).argsort(descending=True)[:2].tolist()  # concepts that fire
    edits = {active[0]: 3.0, active[1]: 0.5}
    index, values = torch.tensor(list(edits)), torch.tensor(list(edits.values()))
    edited = edit_codes(codes, index, values, mode)
    # the edit rule itself
    expected_cols = {
        "add": codes[:, index] + values,
        "scale": codes[:, index] * values,
        "clamp": values.expand(len(codes), 2),
        "ablate": torch.zeros(len(codes), 2),
    }[mode]
    torch.testing.assert_close(edited[:, index], expected_cols)
    others = torch.ones(C, dtype=torch.bool)
    others[index] = False
    assert torch.equal(edited[:, others], codes[:, others])
    concepts = list(edits) if mode == "ablate" else edits
    with torch.no_grad():
        delta = sae.decode(edited) - sae.decode(codes)
        with steer(vit, LAYER, sae, concepts, mode=mode):
            steered = layer_value(vit, pixels).reshape(-1, D)
        with steer(vit, LAYER, sae, concepts, mode=mode, error_term=False):
            replaced = layer_value(vit, pixels).reshape(-1, D)
    torch.testing.assert_close(steered, x_ND + delta, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replaced, sae.decode(edited), atol=1e-5, rtol=1e-5)
    assert delta.abs().max() > 1e-3
    checks.assert_clean(vit)


def test_add_moves_along_the_decoded_atom(vit, saes, pixels):
    """With the error term, adding v to concept c adds v · (atom_c scaled to raw space)."""
    sae = saes["rasae"]
    direction = sae.dictionary[7].detach() * sae.input_scale
    with torch.no_grad(), steer(vit, LAYER, sae, {7: 2.5}):
        steered = layer_value(vit, pixels)
    torch.testing.assert_close(
        steered, layer_value(vit, pixels) + 2.5 * direction, atol=1e-5, rtol=1e-5
    )


def test_steer_on_chosen_tokens_and_spatial_masks(vit, saes, pixels):
    sae = saes["topk"]
    clean = layer_value(vit, pixels)
    direction = sae.dictionary[3].detach() * sae.input_scale

    def moved(value):  # (B, T) which tokens changed
        return (value - clean).abs().amax(-1) > 1e-4

    with torch.no_grad(), steer(vit, LAYER, sae, {3: 4.0}, tokens="cls"):
        cls_only = layer_value(vit, pixels)
    expected = torch.zeros(4, 27, dtype=torch.bool)
    expected[:, 0] = True
    assert torch.equal(moved(cls_only), expected)
    # one mask for every image over the 4×6 grid: patch (i, j) is token 3 + 6i + j
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1, 2] = mask[3, 5] = True
    with torch.no_grad(), steer(vit, LAYER, sae, {3: 4.0}, tokens=mask):
        masked = layer_value(vit, pixels)
    expected = torch.zeros(4, 27, dtype=torch.bool)
    expected[:, [3 + 6 + 2, 3 + 18 + 5]] = True
    assert torch.equal(moved(masked), expected)
    torch.testing.assert_close(masked[:, 11], clean[:, 11] + 4.0 * direction, atol=1e-5, rtol=1e-5)
    # one mask per image, with soft weights
    soft = torch.zeros(4, 4, 6)
    soft[0, 0, 0], soft[2, 3, 1] = 1.0, 0.5
    with torch.no_grad(), steer(vit, LAYER, sae, {3: 4.0}, tokens=soft):
        per_image = layer_value(vit, pixels)
    expected = torch.zeros(4, 27, dtype=torch.bool)
    expected[0, 3], expected[2, 3 + 18 + 1] = True, True
    assert torch.equal(moved(per_image), expected)
    torch.testing.assert_close(
        per_image[2, 22], clean[2, 22] + 2.0 * direction, atol=1e-5, rtol=1e-5
    )
    # pixel masks pool to the grid: a 16×16 square at (8, 16) covers patches (1..2, 2..3)
    pixel = torch.zeros(1, 32, 48)
    pixel[0, 8:24, 16:32] = 1
    grid = pixel_mask_to_grid(pixel, (4, 6))
    assert grid[0].nonzero().tolist() == [[1, 2], [1, 3], [2, 2], [2, 3]]
    checks.assert_clean(vit)


def test_one_shot_call_nesting_and_composition(vit, saes, pixels):
    sae = saes["topk"]
    with torch.no_grad():
        one_shot = steer(vit, LAYER, sae, {5: 3.0, 9: -1.0})(pixels)
        with steer(vit, LAYER, sae, {5: 3.0, 9: -1.0}):
            in_context = vit(pixels)
        with steer(vit, LAYER, sae, {5: 3.0}), steer(vit, LAYER, sae, {9: -1.0}):
            nested = vit(pixels)
            assert len(hooks.active(vit)) == 2
        # steering composes with a splice entered before it and with plain hook edits
        with splice(vit, LAYER, sae, error_term=True), steer(vit, LAYER, sae, {5: 3.0, 9: -1.0}):
            after_splice = vit(pixels)
        shift = torch.zeros(D)
        shift[0] = 0.25
        with hooks.add(vit, LAYER, shift), steer(vit, LAYER, sae, {5: 3.0}) as spliced:
            value = layer_value(vit, pixels)
        # the steering saw the shifted tokens: its codes are the encoding of x + shift
        base = hooks.capture(vit, pixels, LAYER)[LAYER].acts + shift
    torch.testing.assert_close(spliced.last.codes_BTC.reshape(-1, C), sae.encode(base).detach())
    direction = sae.dictionary[5].detach() * sae.input_scale
    torch.testing.assert_close(value.reshape(-1, D), base + 3.0 * direction, atol=1e-5, rtol=1e-5)
    assert torch.equal(one_shot, in_context)
    torch.testing.assert_close(nested, in_context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after_splice, in_context, atol=1e-5, rtol=1e-5)
    assert (in_context - vit(pixels)).abs().max() > 1e-3
    checks.assert_clean(vit)


def test_hooks_are_removed_after_every_context_also_on_errors(vit, saes, pixels, acts):
    sae = saes["topk"]
    with torch.no_grad():
        clean = vit(pixels)
    with pytest.raises(KeyError, match="in the block"), splice(vit, LAYER, sae):
        vit(pixels)
        raise KeyError("in the block")
    checks.assert_clean(vit)
    steering = steer(vit, LAYER, sae, {1: 2.0})
    with pytest.raises(RuntimeError, match="in the block"), steering:
        raise RuntimeError("in the block")
    checks.assert_clean(vit)
    # an error raised by the SAE inside the traced forward
    untrained = build_sae("batchtopk", D, 32, k=4).eval()
    untrained.set_normalization(acts.mean(0), acts.std(0), "standardize")
    with pytest.raises(RuntimeError, match="no inference threshold"), splice(vit, LAYER, untrained):
        vit(pixels)
    checks.assert_clean(vit)
    # an inner failure leaves the outer context in place; then everything is removed
    with steer(vit, LAYER, sae, {1: 2.0}):
        outer = vit(pixels)
        with (
            pytest.raises(ValueError, match="returned"),
            splice(vit, LAYER, sae, edit=lambda c: c[:, :1]),
        ):
            vit(pixels)
        torch.testing.assert_close(vit(pixels), outer)
        assert len(hooks.active(vit)) == 1
    checks.assert_clean(vit)
    with torch.no_grad():
        assert torch.equal(vit(pixels), clean)


def test_errors_name_the_fix(vit, saes, acts):
    narrow = build_sae("topk", 64, 32, k=4)
    with pytest.raises(ValueError, match=r"width 64 .* width 192"):
        splice(vit, LAYER, narrow).__enter__()
    sae = saes["topk"]
    with pytest.raises(ValueError, match=r"out of range.*0\.\.255"):
        steer(vit, LAYER, sae, {256: 1.0})
    with pytest.raises(ValueError, match="unknown steering mode"):
        steer(vit, LAYER, sae, {1: 1.0}, mode="boost")
    with pytest.raises(TypeError, match=r"\{concept: value\} mapping"):
        steer(vit, LAYER, sae, [1, 2], mode="add")
    with pytest.raises(ValueError, match="finite"):
        steer(vit, LAYER, sae, {1: float("nan")})
    with pytest.raises(ValueError, match=r"4×6 patch grid.*pixel_mask_to_grid"):
        steer(vit, LAYER, sae, {1: 1.0}, tokens=torch.ones(6, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="2 images but the batch has 4"):
        steer(vit, LAYER, sae, {1: 1.0}, tokens=torch.ones(2, 4, 6, dtype=torch.bool))(
            _images(4, 0)
        )
    with (
        pytest.raises(TypeError, match="needs a probe_sae SAE"),
        splice(vit, LAYER, torch.nn.Linear(192, 192)),
    ):
        pass
    checks.assert_clean(vit)


# --------------------------------------------------------------------------------------- maps
def test_concept_maps_fold_patch_codes_row_major(vit, saes, pixels):
    sae = saes["topk"]
    maps = concept_maps(vit, LAYER, sae, pixels)
    assert maps.shape == (4, C, 4, 6)
    codes = sae.encode(layer_value(vit, pixels).reshape(-1, D)).detach().view(4, 27, C)
    for i, j in [(0, 0), (1, 4), (3, 5)]:
        torch.testing.assert_close(maps[:, :, i, j], codes[:, 3 + 6 * i + j])
    chosen = concept_maps(vit, LAYER, sae, pixels, concepts=[4, 1], size=(32, 48))
    assert chosen.shape == (4, 2, 32, 48)
    values = torch.arange(2 * 24 * 3.0).view(2, 24, 3)
    assert torch.equal(fold_patches(values, (4, 6))[1, 2], values[1, :, 2].view(4, 6))


def test_concept_maps_follow_the_image(vit, acts):
    """Ground truth independent of the layout: before the first block every token is a function
    of its own patch, so editing the pixels of patch (2, 5) moves the maps at (2, 5) only."""
    before_blocks = hooks.capture(vit, _images(16, 5), "norm_pre")["norm_pre"].acts
    sae = make_sae("relu", before_blocks, n_concepts=64, steps=5)
    images = _images(2, 6)
    edited = images.clone()
    edited[:, :, 16:24, 40:48] += 2.0
    changed = (
        concept_maps(vit, "norm_pre", sae, edited) - concept_maps(vit, "norm_pre", sae, images)
    ).abs()
    moved = changed.amax(dim=(0, 1)) > 0
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[2, 5] = True
    assert torch.equal(moved, expected)
