"""Spliced fidelity (issue 6): embedding cosine, logit KL and accuracy recovered, with closed forms."""

import math

import pytest
import torch

from probe_sae import load_model, train_sae
from probe_sae.interventions import FidelityReport, logit_kl, spliced_fidelity
from probe_sae.organism.world import generate
from probe_sae.saes import ReLUConfig, ReLUSAE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


@pytest.fixture(scope="module")
def world():
    return generate(48, seed=11)


def identity_sae(d: int) -> ReLUSAE:
    """ReLU SAE with atoms ±e_i: relu(x) − relu(−x) = x exactly."""
    sae = ReLUSAE(d, ReLUConfig(n_concepts=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.decoder.weight.copy_(torch.cat([eye, -eye]))
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_pre.zero_()
    return sae.eval()


def silent_sae(d: int) -> ReLUSAE:
    """Codes always 0 and b_pre = 0: the reconstruction is the zero vector (= zero ablation)."""
    sae = identity_sae(d)
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)
    return sae


def test_logit_kl_matches_closed_forms():
    p = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    q = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    sp, sq = torch.softmax(p, -1), torch.softmax(q, -1)
    expected = float((sp * (sp / sq).log()).sum())
    assert float(logit_kl(p, q, multilabel=False)[0]) == pytest.approx(expected, rel=1e-12)
    # Bernoulli: σ(0) = 1/2 against σ(a): KL = mean over classes
    a = torch.tensor([[2.0, -3.0]], dtype=torch.float64)
    zero = torch.zeros(1, 2, dtype=torch.float64)
    pa = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(3.0))]
    per_class = [0.5 * math.log(0.5 / x) + 0.5 * math.log(0.5 / (1 - x)) for x in pa]
    assert float(logit_kl(zero, a, multilabel=True)[0]) == pytest.approx(sum(per_class) / 2, rel=1e-10)
    # adding a constant to all logits leaves the softmax unchanged (KL 0), not the Bernoulli KL
    assert float(logit_kl(p, p + 5.0, multilabel=False)[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(logit_kl(p, p + 5.0, multilabel=True)[0]) > 0.1


def test_exact_reconstruction_recovers_everything(organism, world):
    sae = identity_sae(128)
    report = spliced_fidelity(organism, "blocks.2", sae, world.images, labels=world.presence)
    assert isinstance(report, FidelityReport)
    assert report.embedding_cosine == pytest.approx(1.0, abs=1e-6)
    assert report.logit_kl == pytest.approx(0.0, abs=1e-8)
    assert report.accuracy_spliced == report.accuracy_clean
    assert report.accuracy_clean > 0.9  # the organism detects its objects
    # mean-ablating a middle block hurts, so the ratio is defined and exactly 1
    assert report.accuracy_ablated < report.accuracy_clean - 0.05
    assert report.accuracy_recovered == pytest.approx(1.0, abs=1e-12)
    assert report.ablation_logit_kl > 0.05 and report.ablation_embedding_cosine < 0.999


def test_an_sae_that_outputs_the_ablation_recovers_nothing(organism, world):
    report = spliced_fidelity(
        organism, "blocks.2", silent_sae(128), world.images, labels=world.presence, ablation="zero"
    )
    assert report.ablation == "zero"
    assert report.accuracy_spliced == report.accuracy_ablated
    assert report.accuracy_recovered == pytest.approx(0.0, abs=1e-12)
    assert report.logit_kl == pytest.approx(report.ablation_logit_kl, rel=1e-9)


def test_a_trained_sae_lies_between_ablation_and_clean(organism, world):
    result = train_sae(
        organism, "blocks.2", generate(96, seed=5).images, sae="topk", n_concepts=256, k=16,
        batch_size=256, buffer_tokens=2048, epochs=2, lr=3e-3, init_tokens=1024, progress=False,
    )
    report = spliced_fidelity(organism, "blocks.2", result.saes["topk"], world.images, labels=world.presence)
    assert 0.5 < report.embedding_cosine < 1.0
    assert report.embedding_cosine > report.ablation_embedding_cosine
    assert 0 < report.logit_kl < report.ablation_logit_kl
    assert report.accuracy_recovered is not None and 0.0 < report.accuracy_recovered <= 1.05
    table = report.to_markdown()
    assert "accuracy recovered (vs mean ablation)" in table and "final-embedding cosine" in table
    assert FidelityReport(**__import__("json").loads(report.to_json())) == report


def test_clip_uses_zero_shot_logits_with_its_logit_scale():
    clip = load_model("open_clip:ViT-B-32", force_image_size=64)
    images = torch.rand(3, 3, 64, 64)
    prompts = ["a red square", "a blue disc"]
    sae = identity_sae(768)
    report = spliced_fidelity(clip, "blocks.5", sae, images, prompts=prompts, labels=torch.tensor([0, 1, 0]))
    assert report.embedding_cosine == pytest.approx(1.0, abs=1e-5)
    assert report.logit_kl == pytest.approx(0.0, abs=1e-6)
    assert report.accuracy_recovered in (None, pytest.approx(1.0))
    # the zero-ablation KL is the KL of the model's own zero-shot logits (scale included)
    report_zero = spliced_fidelity(clip, "blocks.5", silent_sae(768), images, prompts=prompts, ablation="zero")
    from probe_sae import hooks

    with torch.no_grad():
        clean = clip.zero_shot_logits(images, prompts)
        with hooks.replace(clip, "blocks.5", torch.zeros(1, 1, 768)):
            ablated = clip.zero_shot_logits(images, prompts)
    expected = float(logit_kl(clean, ablated, multilabel=False).mean())
    assert report_zero.logit_kl == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert report_zero.accuracy_clean is None


def test_bad_input_names_the_fix(organism, world):
    with pytest.raises(ValueError, match="one label per image"):
        spliced_fidelity(organism, "blocks.2", identity_sae(128), world.images, labels=world.presence[:3])
    with pytest.raises(ValueError, match="ablation must be"):
        spliced_fidelity(organism, "blocks.2", identity_sae(128), world.images, ablation="noise")
    with pytest.raises(ValueError, match="width"):
        spliced_fidelity(organism, "blocks.2", identity_sae(64), world.images)
