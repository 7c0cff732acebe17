"""The online trainer on a resumable token source: learning, metrics, resume, bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from toy_activations import sparse_mixture

from probe_sae import load_sae
from probe_sae.saes import MPConfig, TopKConfig, TopKSAE, family_config
from probe_sae.stream import TensorTokenSource
from probe_sae.train import SAETarget, TrainConfig, Trainer, warmup_cosine
from probe_sae.train.init import geometric_median

D, C, K = 32, 96, 4


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return sparse_mixture(n_tokens=8192, d_model=D, n_atoms=64, active=K, seed=3).x


def _targets():
    return [
        SAETarget("topk", "tokens", TopKConfig(n_concepts=C, k=K, aux_k=16)),
        SAETarget(
            "rasae",
            "tokens",
            family_config("rasae", n_concepts=C, n_candidates=128, k=K, delta=0.5),
        ),
        SAETarget("mp", "tokens", MPConfig(n_concepts=C, k=K)),
    ]


def _config(tmp_path=None, **kw):
    base = dict(
        max_steps=12,
        lr=3e-3,
        warmup_steps=3,
        init_tokens=512,
        log_every=4,
        progress=False,
        dead_window=512,
    )
    if tmp_path is not None:
        base["checkpoint_dir"] = str(tmp_path)
    base.update(kw)
    return TrainConfig(**base)


def test_three_families_learn_from_one_stream(tokens):
    source = TensorTokenSource(tokens, batch_size=128, epochs=None, seed=0)
    result = Trainer(_targets(), source, _config(max_steps=250, log_every=50, lr=1e-2)).run()
    final = {row["name"]: row for row in result.metrics if row["step"] == 250}
    for name in ("topk", "rasae", "mp"):
        assert final[name]["fvu"] < 0.3, final[name]
        first = next(r for r in result.metrics if r["name"] == name)
        assert final[name]["fvu"] < first["fvu"]
    assert result.steps == 250 and result.tokens == 250 * 128
    held_out = tokens[-1024:]
    for sae in result.saes.values():
        with torch.no_grad():
            from probe_sae.metrics import fvu

            assert fvu(held_out, sae(held_out).x_hat) < 0.3


def test_a_source_that_ends_early_still_logs_its_last_steps(tokens):
    """1,024 tokens in batches of 128 end after 8 steps, before max_steps and between two log
    rows: the steps since the last row get a final row."""
    source = TensorTokenSource(tokens[:1024], batch_size=128, epochs=1, seed=0)
    result = Trainer(_targets()[:1], source, _config(max_steps=100, log_every=5)).run()
    assert result.steps == 8
    assert [row["step"] for row in result.metrics] == [5, 8]


def test_logged_metrics_agree_with_a_recomputation(tokens, tmp_path):
    """Rows of steps 5..8 recomputed from checkpoints of steps 4..7 and the same batches."""
    cfg = _config(tmp_path, max_steps=8, log_every=4, checkpoint_every=1, keep_checkpoints=20)
    result = Trainer(_targets(), TensorTokenSource(tokens, 128, epochs=None, seed=1), cfg).run()
    replay = TensorTokenSource(tokens, 128, epochs=None, seed=1)
    batches = [replay.next_batch()["tokens"] for _ in range(8)]
    for name in ("topk", "rasae", "mp"):
        err = sq = 0.0
        xs, l0s = [], []
        for step in range(5, 9):
            sae = load_sae(tmp_path / f"step-{step - 1:09d}" / name / "sae").train()
            x = batches[step - 1]
            with torch.no_grad():
                out = sae(x)
            x64, xh64 = x.double().numpy(), out.x_hat.double().numpy()
            err += ((x64 - xh64) ** 2).sum()
            xs.append(x64)
            l0s.append((out.codes != 0).sum(dim=1).double().numpy())
        allx = np.concatenate(xs)
        sq = ((allx - allx.mean(axis=0)) ** 2).sum()
        row = next(r for r in result.metrics if r["name"] == name and r["step"] == 8)
        assert row["fvu"] == pytest.approx(err / sq, rel=1e-5)
        assert row["l0"] == pytest.approx(np.concatenate(l0s).mean(), rel=1e-9)


class _InterruptAt:
    """A source that raises KeyboardInterrupt on its n-th batch (as Ctrl-C would)."""

    def __init__(self, source, at_call: int) -> None:
        self.source, self.at_call, self.calls = source, at_call, 0
        self.batch_size = source.batch_size

    def widths(self):
        return self.source.widths()

    def next_batch(self):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt
        return self.source.next_batch()

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


def test_interrupted_and_resumed_run_equals_uninterrupted(tokens, tmp_path):
    cfg = dict(max_steps=10, checkpoint_every=100)
    straight = Trainer(
        _targets(), TensorTokenSource(tokens, 128, None, seed=2), _config(tmp_path / "a", **cfg)
    ).run()

    # init reads 512 tokens = 4 batches; the 9th call is the 5th training batch: 4 steps done
    broken = _InterruptAt(TensorTokenSource(tokens, 128, None, seed=2), at_call=9)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_targets(), broken, _config(tmp_path / "b", **cfg)).run()
    assert (tmp_path / "b" / "latest").read_text() == "step-000000004"
    resumed = Trainer(
        _targets(), TensorTokenSource(tokens, 128, None, seed=2), _config(tmp_path / "b", **cfg)
    ).run(resume=tmp_path / "b")
    assert resumed.steps == straight.steps == 10
    for name, sae in straight.saes.items():
        other = resumed.saes[name].state_dict()
        for key, value in sae.state_dict().items():
            torch.testing.assert_close(other[key], value, rtol=0, atol=1e-6, msg=f"{name}.{key}")
    assert [r["fvu"] for r in resumed.metrics] == pytest.approx(
        [r["fvu"] for r in straight.metrics], rel=1e-6
    )


def test_checkpoints_are_safetensors_and_json_and_pruned(tokens, tmp_path):
    cfg = _config(tmp_path, max_steps=6, checkpoint_every=2, keep_checkpoints=2)
    Trainer(_targets()[:1], TensorTokenSource(tokens, 128, None), cfg).run()
    steps = sorted(p.name for p in tmp_path.glob("step-*"))
    assert steps == ["step-000000004", "step-000000006"]
    files = {p.name for p in (tmp_path / "step-000000006").rglob("*") if p.is_file()}
    assert files == {
        "trainer.json",
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "tracker.safetensors",
    }
    state = json.loads((tmp_path / "step-000000006" / "trainer.json").read_text())
    assert state["step"] == 6 and state["source"]["position"] > 0


def test_non_finite_tokens_are_counted_skipped_and_reported(tokens):
    bad = tokens[:2048].clone()
    bad[::17, 3] = float("nan")
    bad[5::31, 0] = float("inf")
    n_bad = int((~torch.isfinite(bad).all(dim=1)).sum())
    source = TensorTokenSource(bad, 256, epochs=1, seed=0)
    result = Trainer(
        _targets()[:1], source, _config(max_steps=8, log_every=8, init_tokens=256)
    ).run()
    assert result.nonfinite_tokens == {"tokens": n_bad}
    assert result.metrics[-1]["nonfinite_tokens"] == n_bad
    assert all(torch.isfinite(p).all() for p in result.saes["topk"].parameters())


def test_wrong_layer_or_width_fails_before_training(tokens):
    source = TensorTokenSource(tokens, 128)
    with pytest.raises(ValueError, match=r"wants layer 'blocks\.3'.*\['tokens'\]"):
        Trainer([SAETarget("a", "blocks.3", TopKConfig(n_concepts=C))], source, _config())
    with pytest.raises(ValueError, match=rf"d_model=16 but layer 'tokens' has width {D}"):
        Trainer(
            [SAETarget("a", "tokens", TopKSAE(16, TopKConfig(n_concepts=32, k=2)))],
            source,
            _config(),
        )
    with pytest.raises(ValueError, match="letters, digits"):
        Trainer([SAETarget("a/b", "tokens", TopKConfig(n_concepts=C))], source, _config())


def test_warmup_cosine_schedule():
    lrs = [warmup_cosine(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert warmup_cosine(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(55, 100, 1.0, 10, 0.1) == pytest.approx(0.55)


def test_geometric_median_is_robust_and_minimises_distance_sum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    x[:50] += 1000.0  # 10 % outliers drag the mean, not the median
    m = geometric_median(x)
    assert m.norm() < 0.5 < x.mean(0).norm() / 100
    cost = lambda p: (x - p).norm(dim=1).sum()  # noqa: E731
    for _ in range(20):
        assert cost(m) <= cost(m + 0.01 * torch.randn(3, generator=g, dtype=torch.float64))


def test_clip_grad_norm_scales_like_torch_and_leaves_small_gradients_alone():
    from probe_sae.train.sae_run import clip_grad_norm

    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(5, 3)), torch.nn.Parameter(torch.zeros(7))]
    for scale, clipped in ((10.0, True), (0.01, False)):
        grads = [scale * torch.randn(p.shape, generator=g) for p in params]
        twins = [torch.nn.Parameter(torch.zeros_like(p)) for p in params]
        for p, t, gr in zip(params, twins, grads, strict=True):
            p.grad, t.grad = gr.clone(), gr.clone()
        norm = clip_grad_norm(params, 1.0)
        expected = torch.nn.utils.clip_grad_norm_(twins, 1.0)
        assert norm == pytest.approx(float(expected), rel=1e-6)
        for p, t, gr in zip(params, twins, grads, strict=True):
            torch.testing.assert_close(p.grad, t.grad, rtol=1e-6, atol=0)
            assert torch.equal(p.grad, gr) != clipped
