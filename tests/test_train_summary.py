"""The end of a training run: the summary is evaluate() on the run's last tokens, training's
dead fraction agrees with evaluation's, short runs warn, and --cache captures once."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from toy_activations import sparse_mixture

from probe_sae import load_sae
from probe_sae.cli import main
from probe_sae.metrics import evaluate
from probe_sae.saes import TopKConfig, TopKSAE
from probe_sae.stream import TensorTokenSource
from probe_sae.train import SAETarget, TrainConfig, Trainer
from probe_sae.train.dead import FiringTracker
from probe_sae.train.summary import RecentTokens, ShortRunWarning

D, C, K, BATCH = 16, 32, 4, 256


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return sparse_mixture(n_tokens=4096, d_model=D, n_atoms=24, active=K, seed=5).x


def _config(**kw) -> TrainConfig:
    base = dict(max_steps=12, lr=3e-3, warmup_steps=3, init_tokens=512, log_every=4,
                progress=False, summary_tokens=1000)
    return TrainConfig(**{**base, **kw})


def _trained_tokens(tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """The tokens a run of ``steps`` steps trained on, in order (the source is rewound after
    the first sample, so training starts at its first batch)."""
    source = TensorTokenSource(tokens, batch_size=BATCH)
    return torch.cat([source.next_batch()["tokens"] for _ in range(steps)])


def test_summary_is_evaluate_on_the_last_tokens(tokens):
    source = TensorTokenSource(tokens, batch_size=BATCH)
    target = SAETarget("topk", "tokens", TopKConfig(n_concepts=C, k=K))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortRunWarning)
        result = Trainer([target], source, _config()).run()
    last = _trained_tokens(tokens, result.steps)[-1000:]
    expected = evaluate(result.saes["topk"], last, dense_threshold=1e-2)
    got = result.summary["topk"]
    assert got.n_tokens == 1000
    for name in ("fvu", "r2", "l0", "dead_fraction", "dense_fraction"):
        assert getattr(got, name) == getattr(expected, name), name
    assert got.firing_frequency == expected.firing_frequency
    assert got.geometry == {}  # the n_concepts² Gram matrix is left to evaluate()


def test_ring_buffer_keeps_the_newest_tokens_in_order():
    ring = RecentTokens(5)
    assert ring.tokens() is None
    x = torch.arange(24.0).reshape(12, 2)
    for part in (x[:3], x[3:4], x[4:11], x[11:]):
        ring.add(part)
    assert torch.equal(ring.tokens(), x[-5:])
    ring.add(x[:2])
    assert torch.equal(ring.tokens(), torch.cat([x[-3:], x[:2]]))


def test_training_dead_fraction_agrees_with_evaluate_on_really_dead_latents(tokens):
    sae = TopKSAE(D, TopKConfig(n_concepts=C, k=K, seed=0))
    forced = torch.tensor([1, 7, 19, 30])
    source = TensorTokenSource(tokens, batch_size=BATCH)
    trainer = Trainer([SAETarget("topk", "tokens", sae)], source, _config(max_steps=16))
    trainer._initialise()
    with torch.no_grad():
        sae.b_enc[forced] = -1e4  # never among the top k: no gradient, they stay silent
    trainer._train(trainer.total_steps)
    result = trainer._result()
    trained = _trained_tokens(tokens, result.steps)
    over_run = evaluate(result.saes["topk"], trained)
    logged = result.metrics[-1]["dead_fraction"]
    assert logged == over_run.dead_fraction == len(forced) / C
    assert result.summary["topk"].dead_fraction == len(forced) / C


def test_reported_dead_window_is_the_run_until_it_reaches_the_window():
    tracker = FiringTracker(4, window=100)
    tracker.update(torch.tensor([0, 1]), 10)  # latents 0, 1 fire in the first 10 tokens
    tracker.update(torch.tensor([1]), 10)
    assert tracker.reported_dead_mask().tolist() == [False, False, True, True]
    assert not tracker.dead_mask().any()  # the AuxK mask waits for a full window
    tracker.update(torch.tensor([1]), 100)
    assert tracker.reported_dead_mask().tolist() == [True, False, True, True]
    state = tracker.state_dict()
    del state["tokens_seen"]  # a checkpoint written before the counter existed
    tracker.load_state_dict(state)
    assert tracker.tokens_seen == 120


def test_short_run_warns_and_can_be_silenced(tokens):
    def run(steps: int) -> None:
        source = TensorTokenSource(tokens, batch_size=BATCH)
        target = SAETarget("topk", "tokens", TopKConfig(n_concepts=C, k=K))
        Trainer([target], source, _config(max_steps=steps)).run()

    with pytest.warns(ShortRunWarning, match="fewer than 100 per concept.*--cache"):
        run(12)  # 3,072 tokens < 100 × 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(13)  # 3,328 tokens: enough
        warnings.simplefilter("ignore", ShortRunWarning)
        run(12)


def test_cli_cache_trains_three_epochs_from_one_capture(tmp_path, capsys, monkeypatch):
    import probe_sae.stream.activations as activations

    calls = []
    real = activations.capture

    def counting(model, pixels, *args, **kwargs):
        calls.append(pixels.shape[0])
        return real(model, pixels, *args, **kwargs)

    monkeypatch.setattr(activations, "capture", counting)
    cache = tmp_path / "cache"

    def train(epochs: int, out: str, *extra: str) -> dict:
        calls.clear()
        args = ["train", "organism", "--layer", "2", "--images", "synthetic:64", "--n-concepts",
                "32", "--k", "4", "--batch-size", "256", "--epochs", str(epochs), "--log-every",
                "2", "--out", str(tmp_path / out), *extra]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShortRunWarning)
            assert main(args) == 0
        log = json.loads((tmp_path / out / "topk" / "training_log.json").read_text())
        return {"images": sum(calls), "steps": log[-1]["step"], "out": capsys.readouterr().out}

    live = train(3, "live")
    cached = train(3, "cached", "--cache", str(cache))
    assert cached["steps"] == live["steps"] == 3 * (64 * 69 // 256)
    assert live["images"] >= 3 * 64
    assert 64 <= cached["images"] < 2 * 64  # one pass over the images (and a width probe)
    assert f"on the last {cached['steps'] * 256:,} tokens" in cached["out"]  # all of them
    again = train(3, "again", "--cache", str(cache))  # the same capture is reused
    assert again["images"] < 64 and again["steps"] == cached["steps"]
    sae = load_sae(tmp_path / "cached" / "topk")
    assert sae.provenance["model"] == "organism" and sae.provenance["layer"] == "blocks.2"
    run_json = json.loads((tmp_path / "cached" / "run.json").read_text())
    assert run_json["cache"] == str(cache)
