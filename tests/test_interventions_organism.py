"""Interventions on the model organism, whose ground truth is known: which objects each image
holds and where (`probe_sae.organism.world`).

Protocol. TopK SAEs (512 concepts, k = 16) are trained on the organism's tokens at
``blocks.3`` (the last block; the head reads its CLS token) and ``blocks.2``, over 1024
training collages. On 256 held-out collages, the concepts that best detect object X are those
whose maximum code over the image's tokens ranks images with X above images without X (ROC
AUC). For each of the 16 objects X, at ``blocks.3``:

* Ablation (error term kept, so nothing but the ablated concepts changes): zeroing X's TOP = 3
  best concepts must lower P(X) on images holding X by >= ABLATE_DROP on average over the
  objects, >= ABLATE_RATIO times the mean |change| of P(Y) for the other objects Y on images
  holding Y but not X; and for every single object by >= ABLATE_MIN and >= 10× that object's
  off-target change.
* Addition: adding X's best concept, at the 90th percentile of its per-image maximum on images
  with X, to all tokens of images without X must raise P(X) by >= ADD_RISE on average,
  >= ADD_RATIO times the mean |change| of the other objects' probabilities, and by >= ADD_MIN
  for at least ADD_KINDS of the 16 objects.
* Sweep: adding 0 … 2× that value never lowers P(X) by more than 0.01 from one step to the
  next, for every object, and raises it by > 0.3 for at least ADD_KINDS objects
  (`steering_sweep`).

At ``blocks.2`` the concept map of the concept that best detects X over the patches peaks in
X's cell of the 2 × 2 collage for >= POINTING of the images holding X, on average over the
objects (a random patch: 0.25); and integrated gradients of P(X) are complete to 1 %, where 4
quadrature nodes are not enough (the trained organism is far from linear in its codes).
"""

from __future__ import annotations

import pytest
import torch
from sae_fitting import fit_sae
from scipy.stats import rankdata

from probe_sae import build_sae, hooks, organism
from probe_sae.interventions import (
    class_probability,
    concept_maps,
    integrated_gradients,
    steer,
    steering_sweep,
)
from probe_sae.organism import world as synthetic

LAYER, MAP_LAYER = "blocks.3", "blocks.2"
N_CONCEPTS, K = 512, 16
TOP = 3
ABLATE_DROP, ABLATE_RATIO, ABLATE_MIN = 0.5, 20.0, 0.1
ADD_RISE, ADD_RATIO, ADD_MIN, ADD_KINDS = 0.5, 10.0, 0.15, 12
POINTING = 0.5
KINDS = range(synthetic.N_KINDS)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return organism.load_organism(train_if_missing=False)


def fit(acts: torch.Tensor):
    sae = build_sae("topk", acts.shape[1], N_CONCEPTS, k=K, seed=0)
    return fit_sae(sae, acts, 400, batch=1024)


@pytest.fixture(scope="module")
def saes(model):
    got = hooks.capture(model, synthetic.generate(1024, seed=11).images, [LAYER, MAP_LAYER])
    return {layer: fit(got[layer].acts) for layer in (LAYER, MAP_LAYER)}


@pytest.fixture(scope="module")
def held_out():
    return synthetic.generate(256, seed=12)


def auroc(score_BC: torch.Tensor, label_BK: torch.Tensor) -> torch.Tensor:
    """(C, K) ROC AUC of each score column for each boolean label column (Mann–Whitney U with
    average ranks for ties: zero codes tie a lot)."""
    ranks_BC = torch.from_numpy(rankdata(score_BC.double().numpy(), axis=0))
    label = label_BK.double()
    n_pos = label.sum(0)
    n_neg = label.shape[0] - n_pos
    return (ranks_BC.T @ label - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@pytest.fixture(scope="module")
def detection(model, saes, held_out):
    """At LAYER: (B, T, C) codes and each object's TOP best-detecting concepts."""
    with torch.no_grad():
        codes = saes[LAYER].encode(hooks.capture(model, held_out.images, LAYER)[LAYER].acts)
    codes_BTC = codes.view(len(held_out), -1, N_CONCEPTS)
    aucs_CK = auroc(codes_BTC.amax(dim=1), held_out.presence.bool())
    best = {kind: aucs_CK[:, kind].topk(TOP).indices.tolist() for kind in KINDS}
    return codes_BTC, best


@pytest.fixture(scope="module")
def clean_probs(model, held_out):
    with torch.no_grad():
        return torch.sigmoid(model(held_out.images))


def _table(main_K: torch.Tensor, off_K: torch.Tensor) -> dict[str, tuple[float, float]]:
    return {
        synthetic.KIND_NAMES[k]: (round(float(main_K[k]), 3), round(float(off_K[k]), 4))
        for k in KINDS
    }


def test_ablating_an_objects_concepts_removes_that_object(
    model, saes, held_out, detection, clean_probs
):
    _, best = detection
    present = held_out.presence.bool()
    drops, others = [], []
    for kind in KINDS:
        with torch.no_grad():
            ablated = torch.sigmoid(
                steer(model, LAYER, saes[LAYER], best[kind], mode="ablate")(held_out.images)
            )
        change = clean_probs - ablated  # (B, K) drop of every object's probability
        drops.append(change[present[:, kind], kind].mean())
        rest = [change[present[:, y] & ~present[:, kind], y] for y in KINDS if y != kind]
        others.append(torch.cat(rest).abs().mean())
    drops_K, others_K = torch.stack(drops), torch.stack(others)
    report = _table(drops_K, others_K)
    assert float(drops_K.mean()) >= ABLATE_DROP, report
    assert float(drops_K.mean()) >= ABLATE_RATIO * float(others_K.mean()), report
    assert bool((drops_K >= ABLATE_MIN).all() and (drops_K >= 10 * others_K).all()), report


def test_adding_an_objects_concept_makes_the_model_see_it(
    model, saes, held_out, detection, clean_probs
):
    codes_BTC, best = detection
    present = held_out.presence.bool()
    rises, others = [], []
    for kind in KINDS:
        concept = best[kind][0]
        value = float(codes_BTC[present[:, kind], :, concept].amax(dim=1).quantile(0.9))
        absent = ~present[:, kind]
        with torch.no_grad():
            added = torch.sigmoid(
                steer(model, LAYER, saes[LAYER], {concept: value})(held_out.images[absent])
            )
        change = added - clean_probs[absent]
        rises.append(change[:, kind].mean())
        others.append(change[:, [y for y in KINDS if y != kind]].abs().mean())
    rises_K, others_K = torch.stack(rises), torch.stack(others)
    report = _table(rises_K, others_K)
    assert float(rises_K.mean()) >= ADD_RISE, report
    assert float(rises_K.mean()) >= ADD_RATIO * float(others_K.mean()), report
    assert int((rises_K >= ADD_MIN).sum()) >= ADD_KINDS, report


def test_steering_sweep_is_a_dose_response(model, saes, held_out, detection, clean_probs):
    """Adding more of X's best concept (0 to twice the addition test's value) never lowers P(X)
    on 32 images without X by more than 0.01 at any step, for every object, and raises it by
    > 0.3 for >= ADD_KINDS objects. (A strict ">=" at every step for every object depends on
    which of two near-tied concepts wins X's AUC, which float rounding in training decides:
    with yellow_disk's runner-up, AUC 0.94, the curve is flat, 0.019 → 0.015.)"""
    codes_BTC, best = detection
    present = held_out.presence.bool()
    rises = []
    for kind in KINDS:
        concept = best[kind][0]
        top = float(codes_BTC[present[:, kind], :, concept].amax(dim=1).quantile(0.9))
        absent = (~present[:, kind]).nonzero()[:, 0][:32]
        sweep = steering_sweep(
            model,
            LAYER,
            saes[LAYER],
            held_out.images[absent],
            concept,
            torch.linspace(0, 2 * top, 5),
            class_probability(kind, activation="sigmoid"),
            mode="add",
            progress=False,
        )
        mean_V = sweep.target_VB.mean(dim=1)
        torch.testing.assert_close(sweep.target_VB[0], clean_probs[absent, kind], atol=1e-5, rtol=0)
        assert bool((mean_V[1:] >= mean_V[:-1] - 0.01).all()), (synthetic.KIND_NAMES[kind], mean_V)
        rises.append(float(mean_V[-1] - mean_V[0]))
    assert sum(rise > 0.3 for rise in rises) >= ADD_KINDS, rises


def test_concept_maps_point_at_the_object(model, saes, held_out):
    maps = concept_maps(model, MAP_LAYER, saes[MAP_LAYER], held_out.images)  # (B, C, 8, 8)
    assert maps.shape == (len(held_out), N_CONCEPTS, 8, 8)
    present = held_out.presence.bool()
    aucs_CK = auroc(maps.amax(dim=(2, 3)), present)
    hits = []
    for kind in KINDS:
        images = present[:, kind].nonzero()[:, 0]
        peak = maps[images, int(aucs_CK[:, kind].argmax())].flatten(1).argmax(dim=1)
        slot = (held_out.kinds[images] == kind).float().argmax(dim=1)
        centre_y, centre_x = held_out.centers[images, slot].unbind(-1)
        cell = 64 // 2  # the collage is 2 × 2 cells; a cell spans 4 × 4 patches of 8 px
        hit = (peak // 8 // 4 == (centre_y // cell).long()) & (
            peak % 8 // 4 == (centre_x // cell).long()
        )
        hits.append(hit.float().mean())
    hits_K = torch.stack(hits)
    assert float(hits_K.mean()) >= POINTING, {
        synthetic.KIND_NAMES[k]: round(float(hits_K[k]), 2) for k in KINDS
    }


def test_integrated_gradients_are_complete_on_the_organism(model, saes, held_out):
    images = held_out.images[:4]
    target = class_probability(held_out.kinds[:4, 0], activation="sigmoid")
    attr = integrated_gradients(model, MAP_LAYER, saes[MAP_LAYER], images, target, progress=False)
    difference = attr.target_B - attr.baseline_target_B
    assert difference.abs().max() > 0.05
    assert bool((attr.completeness_gap_B.abs() <= 0.01 * difference.abs() + 1e-6).all()), (
        attr.completeness_gap_B,
        difference,
    )
    # the organism is far from linear in its codes: four quadrature nodes are not enough
    coarse = integrated_gradients(
        model, MAP_LAYER, saes[MAP_LAYER], images, target, n_steps=4, progress=False
    )
    assert coarse.relative_completeness_error > 0.01
