"""probe_sae.interventions attribution: gradient × activation, integrated gradients (completeness),
targets (class logits, open_clip and Hugging Face CLIP prompt similarity, callables), attribution
maps and the steering sweep. Real architectures with random weights and small configs."""

from __future__ import annotations

import json
import warnings

import model_checks as checks
import pytest
import torch
import transformers as T
from sae_fitting import fit_sae, tiny_timm_vit

from probe_sae import build_sae, hooks, kmeans
from probe_sae.interventions import (
    attribute,
    class_logit,
    class_probability,
    grad_x_act,
    integrated_gradients,
    prompt_similarity,
    steer,
    steering_sweep,
)
from probe_sae.models import load_model

LAYER = "blocks.1"
FAMILIES = ["relu", "topk", "batchtopk", "jumprelu", "mp", "asae", "rasae"]


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_complete(attr, floor: float = 1e-6) -> None:
    """Completeness of integrated gradients per image: |Σ attributions − (f(z) − f(z′))| is at
    most 1 % of |f(z) − f(z′)| (plus a float32 rounding floor), on a non-trivial difference."""
    difference = attr.target_B - attr.baseline_target_B
    assert difference.abs().max() > 1e-2, f"target difference too small to test: {difference}"
    gap = attr.completeness_gap_B.abs()
    assert bool((gap <= 0.01 * difference.abs() + floor).all()), (gap, difference)
    assert attr.relative_completeness_error < 0.01


def sae_for(model, layer, images, family="topk", n_concepts=128, **options):
    key = f"blocks.{layer}" if isinstance(layer, int) else layer
    acts = hooks.capture(model, images, layer)[key].acts
    if family not in ("relu", "jumprelu") and "k" not in options:
        options["k"] = 8
    candidates = kmeans(acts, n_concepts, seed=0) if family in ("asae", "rasae") else None
    return fit_sae(
        build_sae(family, acts.shape[1], n_concepts, candidates=candidates, seed=0, **options),
        acts,
        steps=30,
    )


@pytest.fixture(scope="module")
def vit():
    return tiny_timm_vit()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def vit_saes(vit):
    images = torch.randn(48, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    return {family: sae_for(vit, LAYER, images, family) for family in FAMILIES}


# ------------------------------------------------------------------- integrated gradients
@pytest.mark.parametrize("family", FAMILIES)
def test_integrated_gradients_complete_to_one_percent(vit, vit_saes, pixels, family):
    sae = vit_saes[family]
    target = class_logit(torch.tensor([0, 3, 7]))  # one class per image
    attr = integrated_gradients(vit, LAYER, sae, pixels, target, n_steps=16, progress=False)
    with torch.no_grad():
        clean = vit(pixels)
    # the target at the actual codes is the clean model's; the baseline is all codes zero
    torch.testing.assert_close(attr.target_B, clean[[0, 1, 2], [0, 3, 7]], atol=1e-5, rtol=0)
    with torch.no_grad(), steer(vit, LAYER, sae, list(range(sae.n_concepts)), mode="ablate"):
        ablated = vit(pixels)[[0, 1, 2], [0, 3, 7]]
    torch.testing.assert_close(attr.baseline_target_B, ablated, atol=1e-5, rtol=0)
    assert_complete(attr)
    assert attr.scores_BTC.shape == (3, 27, 128) and attr.per_image.shape == (3, 128)
    # inactive concepts get nothing (zero baseline)
    assert bool((attr.scores_BTC[attr.codes_BTC == 0] == 0).all())
    checks.assert_clean(vit)


def test_quadrature_choices_and_baselines(vit, vit_saes, pixels):
    sae = vit_saes["topk"]
    target = class_probability(2)
    coarse = integrated_gradients(
        vit, LAYER, sae, pixels, target, n_steps=2, method="riemann_middle", progress=False
    )
    fine = integrated_gradients(
        vit,
        LAYER,
        sae,
        pixels,
        target,
        n_steps=24,
        method="riemann_middle",
        steps_per_forward=5,
        progress=False,
    )
    gauss = integrated_gradients(vit, LAYER, sae, pixels, target, n_steps=8, progress=False)
    assert fine.relative_completeness_error < coarse.relative_completeness_error
    assert_complete(gauss)
    assert_complete(fine)
    torch.testing.assert_close(
        gauss.per_image, fine.per_image, atol=2e-3 * gauss.per_image.abs().max(), rtol=0
    )
    # a baseline equal to the codes gives zero attribution and zero target difference
    same = integrated_gradients(
        vit, LAYER, sae, pixels, target, baseline=gauss.codes_BTC, n_steps=2, progress=False
    )
    assert same.scores_BTC.abs().max() == 0
    torch.testing.assert_close(same.baseline_target_B, same.target_B)
    # a mean-code baseline still satisfies completeness
    mean = gauss.codes_BTC.mean(dim=(0, 1))
    other = integrated_gradients(
        vit, LAYER, sae, pixels, target, baseline=mean, n_steps=16, progress=False
    )
    assert_complete(other)
    with pytest.raises(ValueError, match="does not broadcast"):
        integrated_gradients(
            vit, LAYER, sae, pixels, target, baseline=torch.zeros(5), progress=False
        )
    with pytest.raises(ValueError, match="unknown integration method"):
        integrated_gradients(vit, LAYER, sae, pixels, target, method="simpson", progress=False)
    checks.assert_clean(vit)


# ------------------------------------------------------------------- gradient × activation
def test_grad_x_act_matches_finite_differences(vit, vit_saes, pixels):
    """z_tc · ∂f/∂z_tc against central differences of f under `steer(add ±h)` at one token."""
    sae = vit_saes["topk"]
    target = class_logit(4)
    attr = grad_x_act(vit, LAYER, sae, pixels[:1], target)
    with torch.no_grad():
        torch.testing.assert_close(attr.target_B, vit(pixels[:1])[:, 4], atol=1e-5, rtol=0)
    flat = attr.scores_BTC[0].abs().flatten().topk(4).indices
    h = 0.05
    for position in flat.tolist():
        token, concept = divmod(position, sae.n_concepts)
        with torch.no_grad():
            up = steer(vit, LAYER, sae, {concept: h}, tokens=[token])(pixels[:1])[0, 4]
            down = steer(vit, LAYER, sae, {concept: -h}, tokens=[token])(pixels[:1])[0, 4]
        expected = attr.codes_BTC[0, token, concept] * (up - down) / (2 * h)
        torch.testing.assert_close(
            attr.scores_BTC[0, token, concept], expected, rtol=2e-2, atol=1e-5
        )
    checks.assert_clean(vit)


def test_attribution_per_token_and_maps(vit, vit_saes, pixels):
    sae = vit_saes["mp"]
    attr = attribute(vit, LAYER, sae, pixels, 1, method="grad_x_act", tokens="patches")
    assert attr.scores_BTC.shape == (3, 24, 128)
    assert attr.token_index.tolist() == list(range(3, 27))
    total = attr.map()
    assert total.shape == (3, 1, 4, 6)
    torch.testing.assert_close(total[:, 0, 1, 2], attr.per_token[:, 6 + 2])
    values, concepts = attr.top(3)
    maps = attr.map(concepts[0])
    assert maps.shape == (3, 3, 4, 6)
    torch.testing.assert_close(maps[0].sum(dim=(1, 2)), values[0])
    cls_only = attribute(vit, LAYER, sae, pixels, 1, method="grad_x_act", tokens="cls")
    assert cls_only.token_index.tolist() == [0]
    with pytest.raises(ValueError, match="did not cover every patch"):
        cls_only.map()
    with pytest.raises(ValueError, match="completeness is defined for integrated gradients"):
        _ = cls_only.completeness_gap_B
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(vit, LAYER, sae, pixels, 1, method="lrp")
    checks.assert_clean(vit)


def test_targets_are_checked(vit, vit_saes, pixels):
    sae = vit_saes["topk"]
    with pytest.raises(ValueError, match=r"one float per image, a \(3,\) tensor"):
        grad_x_act(vit, LAYER, sae, pixels, lambda out: out)
    with pytest.raises(ValueError, match="out of range for 10 classes"):
        grad_x_act(vit, LAYER, sae, pixels, 12)
    with pytest.raises(TypeError, match="a class index or a callable"):
        grad_x_act(vit, LAYER, sae, pixels, "dog")
    with pytest.raises(ValueError, match=r"\(B, 512\) image embeddings"):
        text = torch.randn(512)
        grad_x_act(vit, LAYER, sae, pixels, prompt_similarity(vit, text))
    checks.assert_clean(vit)
    # any callable on the output works, e.g. a margin between two classes
    margin = grad_x_act(vit, LAYER, sae, pixels, lambda out: out[:, 1] - out[:, 2])
    one = grad_x_act(vit, LAYER, sae, pixels, 1)
    two = grad_x_act(vit, LAYER, sae, pixels, 2)
    torch.testing.assert_close(
        margin.scores_BTC, one.scores_BTC - two.scores_BTC, atol=1e-6, rtol=1e-4
    )


# ------------------------------------------------------------------- steering sweep
def test_steering_sweep_follows_the_gradient(vit, vit_saes, pixels):
    """The sweep's slope at 0 for "add" on every token is Σ_t ∂f/∂z_tc, from the attribution."""
    sae = vit_saes["topk"]
    target = class_probability(5)
    attr = grad_x_act(vit, LAYER, sae, pixels, target)
    concept = int(attr.gradients_BTC.sum(1).abs().sum(0).argmax())
    h = 0.02
    sweep = steering_sweep(
        vit, LAYER, sae, pixels, concept, [-h, 0.0, h], target, mode="add", progress=False
    )
    assert sweep.target_VB.shape == (3, 3) and sweep.concepts == [concept] and sweep.mode == "add"
    torch.testing.assert_close(sweep.clean_B, attr.target_B, atol=1e-6, rtol=0)
    torch.testing.assert_close(sweep.change_VB[1], torch.zeros(3), atol=1e-6, rtol=0)
    slope = (sweep.target_VB[2] - sweep.target_VB[0]) / (2 * h)
    expected = attr.gradients_BTC[..., concept].sum(1)
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(slope, expected, rtol=2e-2, atol=2e-2 * expected.abs().max())
    ones = steering_sweep(
        vit, LAYER, sae, pixels, concept, [1.0], target, mode="scale", progress=False
    )
    torch.testing.assert_close(ones.change_VB[0], torch.zeros(3), atol=1e-6, rtol=0)
    clamp = steering_sweep(
        vit, LAYER, sae, pixels, [concept, 3], torch.linspace(0, 6, 4), target, progress=False
    )
    assert (
        clamp.mean_change_V.shape == (4,)
        and clamp.mode == "clamp"
        and clamp.concepts == [concept, 3]
    )
    with pytest.raises(ValueError, match="no value to sweep"):
        steering_sweep(vit, LAYER, sae, pixels, concept, [1.0], target, mode="ablate")
    checks.assert_clean(vit)


# ------------------------------------------------------------------- CLIP text towers
@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_model("open_clip:ViT-B-32", force_image_size=64)


def test_open_clip_prompt_similarity(clip):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    layer = "blocks.6"
    sae = sae_for(
        clip,
        layer,
        torch.randn(24, 3, 64, 64, generator=torch.Generator().manual_seed(4)),
        n_concepts=256,
        k=16,
    )
    similarity = prompt_similarity(clip, "a photo of a dog")
    logit = prompt_similarity(clip, "a photo of a dog", logit=True)
    with torch.no_grad():
        expected = clip.zero_shot_logits(images, ["a photo of a dog", "a cat"])[:, 0]
        torch.testing.assert_close(logit(clip(images)), expected)
        torch.testing.assert_close(similarity(clip(images)) * clip.logit_scale, expected)
    attr = integrated_gradients(clip, layer, sae, images, similarity, n_steps=16, progress=False)
    torch.testing.assert_close(attr.target_B, similarity(clip(images)).detach(), atol=1e-5, rtol=0)
    assert_complete(attr)
    assert attr.map().shape == (2, 1, 2, 2)
    checks.assert_clean(clip)


def _tiny_clip_tokenizer(path) -> None:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    T.CLIPTokenizer(
        vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt")
    ).save_pretrained(path)


def test_hf_clip_prompt_similarity(tmp_path):
    torch.manual_seed(0)
    vision = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    )
    text = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=60,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    T.CLIPModel(
        T.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)
    ).eval().save_pretrained(tmp_path)
    _tiny_clip_tokenizer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(f"hf:{tmp_path}")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    sae = sae_for(
        model,
        0,
        torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(6)),
        n_concepts=96,
    )
    target = prompt_similarity(model, "a dog", logit=True)
    with torch.no_grad():
        torch.testing.assert_close(
            target(model(images)), model.zero_shot_logits(images, ["a dog"])[:, 0]
        )
    attr = integrated_gradients(model, 0, sae, images, target, n_steps=16, progress=False)
    assert_complete(attr)
    gxa = grad_x_act(model, 0, sae, images, target, tokens="patches")
    assert gxa.map().shape == (2, 1, 4, 4)
    checks.assert_clean(model)
