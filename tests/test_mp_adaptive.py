"""MP-SAE at inference with adaptive L0: a token stops once its residual is small enough or an
atom comes back, checked token by token against a plain matching-pursuit loop; the defaults
are today's fixed-k pursuit exactly; evaluate reports the per-token spread of L0."""

from __future__ import annotations

import pytest
import torch

from probe_sae import MPSAE, MPConfig, TopKConfig, TopKSAE, evaluate
from probe_sae.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

D, C, K = 16, 64, 24


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sae(seed: int = 0, **config) -> MPSAE:
    sae = MPSAE(D, MPConfig(n_concepts=C, k=K, seed=seed, **config)).double()
    sae.apply_constraints()  # unit norm to float64 precision
    with torch.no_grad():
        sae.b_pre.copy_(0.1 * torch.randn(D, generator=_gen(seed + 100), dtype=torch.float64))
    return sae


def _tokens(n: int = 80, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, D, generator=_gen(seed), dtype=torch.float64)


def reference_pursuit(
    x_c: torch.Tensor, atoms: torch.Tensor, k: int, floor: float, reselect: bool
) -> tuple[torch.Tensor, list[list[int]]]:
    """Matching pursuit one token at a time, recomputing every correlation: before each step
    stop once ‖r‖ < floor (per token: floor × its own scale is passed in), after a step stop if
    it re-selected an atom (with ``reselect``). Returns dense codes and the chosen atoms."""
    codes = torch.zeros(x_c.shape[0], atoms.shape[0], dtype=x_c.dtype)
    chosen: list[list[int]] = []
    for i, r in enumerate(x_c):
        steps: list[int] = []
        for _ in range(k):
            if r.norm() < floor[i]:
                break
            corr = atoms @ r
            j = int(corr.argmax())
            if corr[j] <= 0:
                break
            codes[i, j] += corr[j]
            r = r - corr[j] * atoms[j]
            steps.append(j)
            if reselect and j in steps[:-1]:
                break
        chosen.append(steps)
    return codes, chosen


def _steps_taken(codes) -> torch.Tensor:
    """(N,) the active (non-zero) pursuit steps of each token."""
    n = codes.n_tokens
    return (codes.values.view(n, -1) != 0).sum(dim=1)


def test_defaults_and_a_zero_threshold_are_plain_matching_pursuit_exactly():
    plain, x = _sae(), _tokens()
    explicit = _sae(residual_threshold=0.0, threshold_mode="absolute", stop_on_reselect=False)
    out_a, out_b = plain(x), explicit(x)
    assert torch.equal(out_a.sparse_codes.values, out_b.sparse_codes.values)
    assert torch.equal(out_a.sparse_codes.indices, out_b.sparse_codes.indices)
    assert torch.equal(out_a.x_hat, out_b.x_hat)
    assert torch.equal(plain.encode(x, residual_threshold=0.0), plain.encode(x))
    # the early-stopping machinery with a threshold no token reaches gives the same codes
    tiny = plain.encode(x, residual_threshold=1e-300, threshold_mode="absolute")
    assert torch.equal(tiny, plain.encode(x))


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_a_residual_threshold_stops_each_token_as_a_reference_loop_does(mode):
    tau = 0.35 if mode == "relative" else 1.2
    sae, x = _sae(residual_threshold=tau, threshold_mode=mode), _tokens()
    x_c = x - sae.b_pre
    scale = x_c.norm(dim=1) if mode == "relative" else torch.ones(x.shape[0], dtype=x.dtype)
    floor = tau * scale
    out = sae(x)
    ref_codes, ref_steps = reference_pursuit(x_c, sae.dictionary.detach(), K, floor, False)
    torch.testing.assert_close(out.codes, ref_codes, rtol=0, atol=1e-10)
    steps = _steps_taken(out.sparse_codes)
    assert steps.tolist() == [len(s) for s in ref_steps]
    # no step once the residual is under the threshold; a token stops at the threshold or at k
    residual = (x - out.x_hat).norm(dim=1)
    for i in range(x.shape[0]):
        r = x_c[i].clone()
        n = out.sparse_codes.values.view(x.shape[0], -1)[i]
        idx = out.sparse_codes.indices.view(x.shape[0], -1)[i]
        for coef, j in zip(n.tolist(), idx.tolist(), strict=True):
            if coef != 0:
                assert r.norm() >= floor[i]
                r = r - coef * sae.dictionary[j].detach()
        assert residual[i] < floor[i] or steps[i] == K
    assert (steps < K).sum() > 20 and (steps == K).sum() < x.shape[0]  # it did stop early


def test_stop_on_reselect_stops_right_after_the_first_repeat():
    sae, x = _sae(seed=1, stop_on_reselect=True), _tokens(seed=8)
    x_c = x - sae.b_pre
    out = sae(x)
    never = torch.zeros(x.shape[0], dtype=x.dtype)
    ref_codes, ref_steps = reference_pursuit(x_c, sae.dictionary.detach(), K, never, True)
    torch.testing.assert_close(out.codes, ref_codes, rtol=0, atol=1e-10)
    n = x.shape[0]
    indices = out.sparse_codes.indices.view(n, -1)
    active = out.sparse_codes.values.view(n, -1) != 0
    repeats = 0
    for i in range(n):
        chosen = indices[i][active[i]].tolist()
        assert chosen == ref_steps[i]
        if len(set(chosen)) < len(chosen):  # only the last step repeats an atom
            assert len(set(chosen[:-1])) == len(chosen) - 1 and chosen[-1] in chosen[:-1]
            repeats += 1
        else:
            assert len(chosen) == K
    assert repeats > n // 2
    # the plain pursuit of the same tokens does re-select, later on
    assert (sae(x, stop_on_reselect=False).l0 < K).sum() > n // 2


def test_adaptive_l0_varies_per_token_and_evaluate_reports_its_spread():
    x = _tokens(400, seed=9)
    plain = evaluate(_sae(seed=2), x, geometry=False)
    sae = _sae(seed=2, residual_threshold=0.3)  # the same weights, stopping early
    l0 = sae(x).l0.double()
    report = evaluate(sae, x, geometry=False, batch_size=128)
    assert report.l0 == pytest.approx(float(l0.mean()), rel=1e-12)
    assert report.l0_std == pytest.approx(float(l0.std(unbiased=False)), rel=1e-9)
    assert report.l0 < plain.l0 and report.l0_std > 1.0 and len(set(l0.tolist())) > 5
    assert "| L0 std over tokens |" in report.to_markdown()
    topk = TopKSAE(D, TopKConfig(n_concepts=C, k=5)).double()
    assert evaluate(topk, x, geometry=False).l0_std == 0.0


def test_stopping_options_train_and_are_checked():
    sae, x = _sae(seed=3), _tokens(seed=10)
    out = sae(x, residual_threshold=0.4, stop_on_reselect=True)
    out.loss.backward()
    assert torch.isfinite(sae.decoder.weight.grad).all() and sae.b_pre.grad.abs().sum() > 0
    # tokens already under the threshold take no step at all
    near = sae.b_pre.detach() + 1e-3 * x[:3]
    none = sae.encode(near, residual_threshold=0.5, threshold_mode="absolute")
    assert none.shape == (3, C) and (none == 0).all()
    with pytest.raises(ConfigError, match="residual_threshold must be >= 0"):
        sae.encode(x, residual_threshold=-0.1)
    with pytest.raises(ConfigError, match="threshold_mode"):
        MPConfig(threshold_mode="percent")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stopping options"):
        sae.encode(x, threshold=0.1)
