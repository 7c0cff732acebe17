"""Mathematical properties of the SAE families, each checked against a reference or a formula."""

from __future__ import annotations

import math

import pytest
import torch
from reference_saes import dense_decode, dense_topk, naive_matching_pursuit

from probe_sae import (
    MPSAE,
    ArchetypalDictionary,
    BatchTopKConfig,
    BatchTopKSAE,
    FreeDictionary,
    JumpReLUConfig,
    JumpReLUSAE,
    MPConfig,
    ReLUConfig,
    ReLUSAE,
    TopKConfig,
    TopKSAE,
    build_sae,
    kmeans,
)
from probe_sae.saes.jumprelu import jumprelu, step
from probe_sae.saes.sparse import SparseCodes, selected_linear


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(sae: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Give b_pre / b_enc non-zero values so tests exercise them; re-project the dictionary
    (atoms made in float32 are unit-norm only to float32 precision after ``.double()``)."""
    sae.apply_constraints()
    g = _gen(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name in ("b_pre", "b_enc"):
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ----------------------------------------------------------------------------- MP-SAE
def test_mp_residual_norm_never_increases_and_equals_reconstruction_error():
    torch.manual_seed(0)
    sae = MPSAE(24, MPConfig(n_concepts=96, k=40)).double()
    _randomise(sae)
    x = torch.randn(50, 24, dtype=torch.float64)
    previous = None
    for k in range(1, 41):
        out = sae(x, k=k)
        codes = out.sparse_codes
        x_c = x - sae.b_pre
        _, residual = naive_matching_pursuit(x_c, sae.dictionary, k)
        res_norm = residual.norm(dim=1)
        # the residual is exactly x - x_hat
        torch.testing.assert_close(res_norm, (x - out.x_hat).norm(dim=1), rtol=0, atol=1e-10)
        if previous is not None:
            assert (res_norm <= previous + 1e-12).all()
            # ‖r_t‖² = ‖r_{t-1}‖² - c_t², c_t the coefficient of step t
            c_t = codes.values.view(50, k)[:, -1]
            torch.testing.assert_close(res_norm**2, previous**2 - c_t**2, rtol=0, atol=1e-9)
        previous = res_norm
    # 40 steps over 96 atoms in 24 dims must re-select atoms (k > d) and still decrease
    assert (previous < x.sub(sae.b_pre).norm(dim=1) * 0.5).all()


def test_mp_with_orthonormal_dictionary_equals_relu_topk():
    d = 32
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(1), dtype=torch.float64))
    sae = MPSAE(
        d, MPConfig(n_concepts=d, k=6), dictionary=FreeDictionary(d, d, init=q.T.float())
    ).double()
    with torch.no_grad():
        sae.decoder.weight.copy_(q.T)
    _randomise(sae, seed=2)
    # coordinates in the atom basis are mostly negative: many tokens have < 6 positive ones
    x = (torch.randn(200, d, generator=_gen(3), dtype=torch.float64) - 1.5) @ q.T
    corr = (x - sae.b_pre) @ sae.dictionary.T
    expected = dense_topk(x - sae.b_pre, sae.dictionary, torch.zeros(d, dtype=torch.float64), 6)
    got = sae.encode(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert ((corr > 0).sum(dim=1) < 6).sum() > 50


def test_gram_matrix_mp_equals_naive_reference_in_codes_and_gradients():
    torch.manual_seed(0)
    sae = MPSAE(16, MPConfig(n_concepts=64, k=24)).double()  # k > d: atoms get re-selected
    _randomise(sae, seed=4)
    x = torch.randn(40, 16, generator=_gen(5), dtype=torch.float64)
    weights = torch.randn(40, 16, generator=_gen(6), dtype=torch.float64)

    out = sae(x)
    (out.x_hat * weights).sum().backward()
    grad_fast = (sae.decoder.weight.grad.clone(), sae.b_pre.grad.clone())
    sae.zero_grad()

    codes_ref, residual_ref = naive_matching_pursuit(x - sae.b_pre, sae.decoder.weight, 24)
    x_hat_ref = x - residual_ref
    (x_hat_ref * weights).sum().backward()
    torch.testing.assert_close(out.codes, codes_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.x_hat, x_hat_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_fast[0], sae.decoder.weight.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_fast[1], sae.b_pre.grad, rtol=0, atol=1e-5)
    # re-selection really happened
    assert (out.codes != 0).sum(dim=1).min() < 24


def test_mp_inference_k_can_exceed_training_k():
    torch.manual_seed(0)
    sae = MPSAE(16, MPConfig(n_concepts=64, k=4))
    x = torch.randn(100, 16)
    errors = [(x - sae(x, k=k).x_hat).pow(2).sum().item() for k in (4, 8, 16, 32)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]


def test_mp_rejects_non_unit_norm_dictionary():
    with pytest.raises(ValueError, match="unit-norm"):
        MPSAE(8, MPConfig(n_concepts=16, k=2), dictionary=FreeDictionary(16, 8, unit_norm=False))


# ------------------------------------------------------------------------------- TopK
@pytest.mark.parametrize(
    ("n_concepts", "k"),
    [(80, 5), (1024, 1), (1024, 4), (1024, 8)],  # 1024 concepts: the block-maximum prefilter
)
def test_topk_sparse_decode_equals_dense_reference_in_value_and_gradient(n_concepts, k):
    sae = TopKSAE(24, TopKConfig(n_concepts=n_concepts, k=k)).double()
    _randomise(sae, seed=7)
    x = torch.randn(64, 24, generator=_gen(8), dtype=torch.float64)
    weights = torch.randn(64, 24, generator=_gen(9), dtype=torch.float64)

    out = sae(x)
    (out.x_hat * weights).sum().backward()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()

    codes = dense_topk(x - sae.b_pre, sae.W_enc, sae.b_enc, k)
    x_hat = dense_decode(codes, sae.decoder.weight, sae.b_pre)
    (x_hat * weights).sum().backward()
    torch.testing.assert_close(out.codes, codes, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.x_hat, x_hat, rtol=0, atol=1e-12)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=0, atol=1e-10, msg=name)


def test_selected_linear_gradients_equal_the_dense_affine_map():
    """Values of (x - center) W^T + b at chosen entries: gradients for W, b, center and x."""
    g = _gen(11)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, generator=g, dtype=torch.float64, requires_grad=True)
    center = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 40, (10, 3), generator=g)
    dense = (x - center) @ w.T + b
    chosen = SparseCodes.from_fixed(dense.detach().gather(1, idx), idx, 40)
    weights = torch.randn(30, generator=g, dtype=torch.float64)
    for with_x_grad in (True, False):
        x.requires_grad_(with_x_grad)
        params = [w, b, center] + ([x] if with_x_grad else [])
        fast = torch.autograd.grad(
            (selected_linear(x, w, b, chosen, center_D=center) * weights).sum(), params
        )
        dense = (x - center) @ w.T + b
        slow = torch.autograd.grad((dense.gather(1, idx).reshape(-1) * weights).sum(), params)
        for a, e in zip(fast, slow, strict=True):
            torch.testing.assert_close(a, e, rtol=0, atol=1e-12)


def test_topk_gradients_touch_only_selected_latents():
    torch.manual_seed(0)
    sae = TopKSAE(16, TopKConfig(n_concepts=200, k=3))
    x = torch.randn(8, 16)
    out = sae(x)
    out.loss.backward()
    used = torch.zeros(200, dtype=torch.bool)
    used[out.sparse_codes.indices] = True
    assert (~used).sum() > 150
    assert sae.W_enc.grad[~used].abs().max() == 0
    assert sae.decoder.weight.grad[~used].abs().max() == 0
    assert sae.W_enc.grad[used].abs().sum(dim=1).min() > 0


def test_topk_auxk_loss_trains_only_dead_latents():
    torch.manual_seed(0)
    sae = TopKSAE(16, TopKConfig(n_concepts=64, k=4, aux_k=8))
    x = torch.randn(32, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[40:] = True
    with torch.no_grad():
        used = sae(x).sparse_codes.indices.unique()
        dead[used] = False
    out = sae(x, dead_mask=dead)
    assert "auxk" in out.terms and out.terms["auxk"] > 0
    sae.zero_grad()
    residual = (x - sae(x).x_hat).detach()
    pre = sae.pre_activations(x - sae.b_pre).detach()
    sae._auxk_loss(x, pre, residual, dead).backward()
    grad_rows = sae.W_enc.grad.abs().sum(dim=1) > 0
    assert grad_rows[dead].any() and not grad_rows[~dead].any()


# -------------------------------------------------------------------------- BatchTopK
def test_batchtopk_mean_l0_is_k_per_token_in_training():
    torch.manual_seed(0)
    sae = BatchTopKSAE(16, BatchTopKConfig(n_concepts=128, k=6))
    x = torch.randn(64, 16)
    out = sae(x)
    l0 = out.l0.float()
    assert l0.mean().item() == pytest.approx(6.0)
    assert l0.max() > 6 or l0.min() < 6  # per token it varies: k is a batch average
    assert l0.sum().item() == 64 * 6


def test_batchtopk_threshold_is_smallest_kept_activation_and_is_saved(tmp_path):
    torch.manual_seed(0)
    sae = BatchTopKSAE(16, BatchTopKConfig(n_concepts=128, k=6, threshold_momentum=0.5))
    x1, x2 = torch.randn(64, 16), torch.randn(64, 16)
    m1 = sae(x1).sparse_codes.values.detach().min()
    assert sae.threshold.item() == pytest.approx(m1.item())
    m2 = sae(x2).sparse_codes.values.detach().min()
    assert sae.threshold.item() == pytest.approx(0.5 * m1.item() + 0.5 * m2.item())
    sae.eval()
    codes = sae.encode(x1)
    pre = (x1 - sae.b_pre) @ sae.W_enc.T + sae.b_enc
    torch.testing.assert_close(codes, pre * (pre > sae.threshold))
    sae.save_pretrained(tmp_path / "b")
    from probe_sae import load_sae

    loaded = load_sae(tmp_path / "b")
    assert loaded.threshold.item() == sae.threshold.item()
    torch.testing.assert_close(loaded.encode(x1), codes)


def test_batchtopk_untrained_inference_raises():
    sae = BatchTopKSAE(8, BatchTopKConfig(n_concepts=16, k=2)).eval()
    with pytest.raises(RuntimeError, match="no inference threshold"):
        sae.encode(torch.randn(4, 8))


# --------------------------------------------------------------------------- JumpReLU
def test_jumprelu_threshold_gradient_matches_the_paper_formula():
    g = _gen(10)
    pre = torch.randn(500, 7, generator=g, dtype=torch.float64)
    theta = torch.rand(7, generator=g, dtype=torch.float64) * 0.5 + 0.1
    eps = 0.2
    upstream = torch.randn(500, 7, generator=g, dtype=torch.float64)
    kernel = ((pre - theta) / eps).abs() < 0.5

    theta_a = theta.clone().requires_grad_()
    (jumprelu(pre, theta_a, eps) * upstream).sum().backward()
    expected = (-(theta / eps) * kernel * upstream).sum(dim=0)
    torch.testing.assert_close(theta_a.grad, expected)

    theta_b = theta.clone().requires_grad_()
    (step(pre, theta_b, eps) * upstream).sum().backward()
    torch.testing.assert_close(theta_b.grad, (-(1 / eps) * kernel * upstream).sum(dim=0))
    assert kernel.sum() > 50


def test_jumprelu_pseudo_gradient_estimates_the_expected_loss_derivative():
    """For pre ~ N(0,1): d/dθ E[pre·H(pre-θ)] = -θ φ(θ) and d/dθ E[H(pre-θ)] = -φ(θ)."""
    pre = torch.randn(2_000_000, 1, generator=_gen(11), dtype=torch.float64)
    theta0, eps = 0.5, 0.05
    phi = math.exp(-(theta0**2) / 2) / math.sqrt(2 * math.pi)
    theta = torch.tensor([theta0], dtype=torch.float64, requires_grad=True)
    jumprelu(pre, theta, eps).mean().backward()
    assert theta.grad.item() == pytest.approx(-theta0 * phi, rel=0.03)
    theta = torch.tensor([theta0], dtype=torch.float64, requires_grad=True)
    step(pre, theta, eps).mean().backward()
    assert theta.grad.item() == pytest.approx(-phi, rel=0.03)


def test_jumprelu_sae_codes_and_l0():
    torch.manual_seed(0)
    sae = JumpReLUSAE(
        12, JumpReLUConfig(n_concepts=40, l0_coeff=0.1, bandwidth=0.05, init_threshold=0.3)
    )
    x = torch.randn(25, 12)
    out = sae(x)
    pre = (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc
    torch.testing.assert_close(out.codes, pre * (pre > 0.3 + 1e-7))
    assert out.terms["l0"].item() == pytest.approx((pre > 0.3).sum(dim=1).float().mean().item())
    out.loss.backward()
    assert sae.log_threshold.grad.abs().sum() > 0


# ------------------------------------------------------------------------------- ReLU
def test_relu_l1_is_weighted_by_decoder_norms():
    """Rescaling atom j by s and its encoder row by 1/s changes neither output nor loss."""
    torch.manual_seed(0)
    sae = ReLUSAE(10, ReLUConfig(n_concepts=30, l1_coeff=0.5)).double()
    _randomise(sae, seed=12)
    x = torch.randn(20, 10, dtype=torch.float64)
    before = sae(x)
    z = before.codes
    expected_l1 = (z * sae.decoder.weight.norm(dim=1)).sum(dim=1).mean()
    assert before.terms["l1"].item() == pytest.approx(expected_l1.item())
    s = torch.rand(30, dtype=torch.float64) * 3 + 0.2
    with torch.no_grad():
        sae.decoder.weight.mul_(s[:, None])
        sae.W_enc.div_(s[:, None])
        sae.b_enc.div_(s)
    after = sae(x)
    torch.testing.assert_close(after.x_hat, before.x_hat)
    torch.testing.assert_close(after.loss, before.loss)


# ---------------------------------------------------------------- unit-norm constraint
def test_unit_norm_gradient_projection_and_renormalisation():
    torch.manual_seed(0)
    sae = TopKSAE(16, TopKConfig(n_concepts=32, k=4))
    sae(torch.randn(64, 16)).loss.backward()
    sae.prepare_gradients()
    w, g = sae.decoder.weight, sae.decoder.weight.grad
    assert (w * g).sum(dim=1).abs().max() < 1e-6
    with torch.no_grad():
        w.add_(torch.randn_like(w))
    sae.apply_constraints()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(32))


# ------------------------------------------------------------------------- archetypal
def _train_steps(sae, x, steps=25, lr=0.05):
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        sae(x).loss.backward()
        sae.prepare_gradients()
        opt.step()
        sae.apply_constraints()
        yield sae


@pytest.mark.parametrize("encoder", ["topk", "batchtopk", "jumprelu"])
def test_asae_atoms_stay_convex_combinations_of_candidates(encoder):
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    candidates = kmeans(x, 40, seed=0)
    hyper = {"k": 4} if encoder != "jumprelu" else {"bandwidth": 0.05}
    sae = build_sae("asae", 12, 24, candidates=candidates, encoder=encoder, **hyper)
    w0 = sae.decoder.weights.detach().clone()
    for s in _train_steps(sae, x):
        w = s.decoder.weights
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(dim=1), torch.ones(24))
        torch.testing.assert_close(s.dictionary, w @ candidates)
        assert torch.isfinite(s.dictionary).all()
    assert (sae.decoder.weights - w0).abs().max() > 1e-3  # it did train


def test_rasae_atoms_stay_within_delta_of_the_hull():
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    candidates = kmeans(x, 40, seed=0)
    delta = 0.3
    sae = build_sae("rasae", 12, 24, candidates=candidates, delta=delta, k=4)
    for s in _train_steps(sae, x, lr=0.2):
        lam = s.decoder.relaxation
        assert (lam.norm(dim=1) <= delta + 1e-6).all()
        hull_part = s.decoder.weights @ candidates
        assert ((s.dictionary - hull_part).norm(dim=1) <= delta + 1e-6).all()
    assert sae.decoder.relaxation.norm(dim=1).max() > 0.5 * delta  # the relaxation is used


def test_archetypal_delta_zero_gives_no_nan_even_with_a_relaxation_present():
    candidates = torch.randn(30, 8)
    dico = ArchetypalDictionary(candidates, 10, delta=0.0)
    assert dico.relaxation is None
    relaxed = ArchetypalDictionary(candidates, 10, delta=0.5)
    relaxed.delta = 0.0  # a δ = 0 projection of a non-zero Λ must give Λ = 0, not NaN
    with torch.no_grad():
        relaxed.relaxation.normal_()
        relaxed.weights.normal_()
        relaxed.weights[3] = -1.0  # a row with no positive entry
    relaxed.apply_constraints()
    assert torch.isfinite(relaxed.atoms()).all()
    assert relaxed.relaxation.abs().max() == 0
    assert relaxed.weights[3].sum().item() == pytest.approx(1.0)


def test_archetypal_factored_sparse_decode_equals_materialised_atoms():
    torch.manual_seed(0)
    candidates = torch.randn(300, 16, dtype=torch.float64)
    sae = TopKSAE(
        16, TopKConfig(n_concepts=200, k=3), dictionary=ArchetypalDictionary(candidates, 200, 0.5)
    ).double()
    with torch.no_grad():
        sae.decoder.weights.add_(torch.rand_like(sae.decoder.weights) * 0.01)
        sae.decoder.relaxation.normal_()
    sae.apply_constraints()
    x = torch.randn(4, 16, dtype=torch.float64)  # few tokens: the factored path is cheaper
    out = sae(x)
    out.loss.backward()
    fast = sae.decoder.weights.grad.clone()
    sae.zero_grad()
    ref = dense_decode(out.codes.detach(), sae.dictionary, sae.b_pre)
    torch.testing.assert_close(out.x_hat, ref)
    codes = sae.encode(x)
    ((dense_decode(codes, sae.dictionary, sae.b_pre) - x).pow(2).mean()).backward()
    torch.testing.assert_close(sae.decoder.weights.grad, fast)


def test_archetypal_needs_enough_candidates():
    with pytest.raises(ValueError, match="at least 10 candidate points"):
        ArchetypalDictionary(torch.randn(5, 4), 10)


def test_kmeans_recovers_separated_clusters():
    g = _gen(13)
    centres = torch.randn(5, 6, generator=g) * 10
    x = (centres[:, None, :] + 0.1 * torch.randn(5, 200, 6, generator=g)).reshape(-1, 6)
    found = kmeans(x, 5, seed=1)
    dist = torch.cdist(found, centres)
    assert dist.min(dim=1).values.max() < 0.1
    assert dist.argmin(dim=1).unique().numel() == 5


# ------------------------------------------------------------------------ validation
def test_width_mismatch_names_both_widths():
    sae = TopKSAE(16, TopKConfig(n_concepts=32, k=4))
    with pytest.raises(ValueError, match=r"d_model=16.*width 12"):
        sae(torch.randn(3, 12))
    with pytest.raises(ValueError, match="flatten"):
        sae(torch.randn(2, 3, 16))


def test_normalisation_makes_the_sae_take_raw_activations():
    torch.manual_seed(0)
    raw = torch.randn(100, 8) * 5 + 3
    sae = TopKSAE(8, TopKConfig(n_concepts=16, k=8))
    sae.set_normalization(raw.mean(0), raw.std(0), "standardize")
    out = sae(raw)
    normed = (raw - raw.mean(0)) / raw.std(0)
    plain = TopKSAE(8, TopKConfig(n_concepts=16, k=8))
    plain.load_state_dict(
        {**sae.state_dict(), "input_mean": torch.zeros(8), "input_scale": torch.ones(8)}
    )
    torch.testing.assert_close(out.x_hat, plain(normed).x_hat * raw.std(0) + raw.mean(0))
    torch.testing.assert_close(out.loss, plain(normed).loss)
