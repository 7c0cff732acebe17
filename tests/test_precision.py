"""Precision and placement on CPU: bf16 autocast of the model forward and the SAE step, the
float64 metrics, SAEs on several devices, the prefetch thread, the per-rank cache reader."""

from __future__ import annotations

import pytest
import torch

from probe_sae import load_model
from probe_sae.config import ConfigError
from probe_sae.metrics.reconstruction import ReconstructionStats
from probe_sae.organism import generate
from probe_sae.saes import TopKConfig, build_sae, family_config
from probe_sae.stream import (
    ActivationStream,
    CachedTokens,
    StreamConfig,
    TensorTokenSource,
    write_cache,
)
from probe_sae.train import SAETarget, TrainConfig, Trainer, place_saes

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::probe_sae.train.summary.ShortRunWarning"),
]

LAYER = "blocks.2"


@pytest.fixture(scope="module")
def model():
    return load_model("organism")


@pytest.fixture(scope="module")
def images():
    return generate(160, seed=0).images


def _train(model, images, stream: StreamConfig, **train) -> Trainer:
    config = TrainConfig(
        **{
            "max_steps": 60,
            "lr": 4e-3,
            "warmup_steps": 5,
            "init_tokens": 2048,
            "log_every": 20,
            "summary_tokens": 4096,
            "progress": False,
            **train,
        }
    )
    source = ActivationStream(model, images, LAYER, stream)
    targets = [SAETarget("topk", LAYER, TopKConfig(n_concepts=256, k=8))]
    trainer = Trainer(targets, source, config)
    trainer.result = trainer.run()
    return trainer


def test_bf16_forward_matches_fp32_fvu_and_keeps_fp32_state(model, images):
    stream = StreamConfig(batch_size=256, image_batch_size=32, buffer_tokens=8192, epochs=None)
    fp32 = _train(model, images, stream)
    bf16 = _train(model, images, StreamConfig(**{**vars(stream), "autocast": "bfloat16"}))
    fvu32, fvu16 = fp32.result.summary["topk"].fvu, bf16.result.summary["topk"].fvu
    assert fvu32 < 0.5
    assert abs(fvu16 - fvu32) / fvu32 < 0.02, (fvu16, fvu32)
    run = bf16.runs[0]
    assert all(p.dtype == torch.float32 for p in run.sae.parameters())
    for state in run.optimizer.state.values():
        assert state["exp_avg"].dtype == torch.float32
    assert all(isinstance(row["fvu"], float) for row in bf16.result.metrics)


@pytest.mark.parametrize("family", ["relu", "jumprelu", "mp", "topk", "batchtopk", "matryoshka"])
def test_bf16_sae_step_matches_fp32(family):
    tokens = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))

    def fvu(**train):
        config = TrainConfig(
            max_steps=40, lr=3e-3, init_tokens=512, summary_tokens=2048, progress=False, **train
        )
        target = SAETarget("a", "tokens", family_config(family, n_concepts=64))
        return Trainer([target], TensorTokenSource(tokens, 256, None), config).run()

    fp32, bf16 = fvu(), fvu(sae_autocast="bfloat16")
    a, b = fp32.summary["a"].fvu, bf16.summary["a"].fvu
    assert abs(b - a) / a < 0.02, (a, b)
    assert all(p.dtype == torch.float32 for p in bf16.saes["a"].parameters())


def test_the_sparse_kernels_give_float32_gradients_under_bf16_autocast():
    """The selected-entry backward of the TopK family (and the archetypal dictionary over it)
    gets bf16 gradients from autocast and float32 weights: it computes in float32."""
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
    for family, extra in (("topk", {}), ("rasae", {"candidates": x[:128]})):
        sae = build_sae(family, 32, 64, k=4, **extra)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sae(x).loss.backward()
        grads = {n: p.grad for n, p in sae.named_parameters() if p.requires_grad}
        assert all(g is not None and g.dtype == torch.float32 for g in grads.values()), family
        assert all(bool(torch.isfinite(g).all()) for g in grads.values()), family


def test_metrics_accumulate_in_float64_from_bf16_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g)
    x_hat = (x + 0.1 * torch.randn(512, 64, generator=g)).bfloat16()
    stats = ReconstructionStats()
    stats.update(x.bfloat16(), x_hat)
    assert stats.sum_x is not None and stats.sum_x.dtype == torch.float64
    xb, xh = x.bfloat16().double(), x_hat.double()
    expected = ((xb - xh) ** 2).sum() / ((xb - xb.mean(0)) ** 2).sum()
    assert stats.fvu == pytest.approx(float(expected), rel=1e-12)


def test_precision_options_are_checked():
    with pytest.raises(ConfigError, match="bfloat16"):
        TrainConfig(sae_autocast="float16")
    with pytest.raises(ConfigError, match="autocast must be one of"):
        StreamConfig(autocast="int8")
    with pytest.raises(ConfigError, match="collective_timeout"):
        TrainConfig(collective_timeout=0)


def test_place_saes_cycles_devices_and_checks_them():
    names = ["a", "b", "c"]
    assert place_saes(names, None) == {"a": None, "b": None, "c": None}
    assert place_saes(names, "cpu") == dict.fromkeys(names, torch.device("cpu"))
    placed = place_saes(names, "cpu", ["cuda:0", "cuda:1"])
    assert placed == {
        "a": torch.device("cuda", 0),
        "b": torch.device("cuda", 1),
        "c": torch.device("cuda", 0),
    }
    with pytest.raises(ConfigError, match="at most one device per SAE"):
        place_saes(["a"], None, ["cpu", "cpu"])
    with pytest.raises(ConfigError, match="not a device"):
        place_saes(["a"], None, ["gpu:zero"])


def _token_run(tokens: torch.Tensor, **train) -> dict[str, dict[str, torch.Tensor]]:
    targets = [
        SAETarget("topk", "tokens", TopKConfig(n_concepts=64, k=4)),
        SAETarget("rasae", "tokens", family_config("rasae", n_concepts=64, k=4, delta=0.5)),
    ]
    config = TrainConfig(max_steps=8, init_tokens=256, log_every=4, progress=False, **train)
    result = Trainer(targets, TensorTokenSource(tokens, 64, None, seed=0), config).run()
    return {name: sae.state_dict() for name, sae in result.saes.items()}


def test_saes_on_their_own_devices_train_as_on_one():
    tokens = torch.randn(1024, 16, generator=torch.Generator().manual_seed(1))
    one = _token_run(tokens)
    spread = _token_run(tokens, sae_devices=("cpu", "cpu"), device="cpu")
    for name, state in one.items():
        for key, value in state.items():
            assert torch.equal(spread[name][key], value), f"{name}.{key}"


def test_prefetch_thread_gives_the_same_run_and_checkpoint_position(model, images, tmp_path):
    stream = StreamConfig(batch_size=128, image_batch_size=16, buffer_tokens=2048, epochs=None)

    def run(prefetch: bool, folder: str):
        config = TrainConfig(
            max_steps=6, init_tokens=256, log_every=3, progress=False, prefetch=prefetch,
            checkpoint_every=3, checkpoint_dir=str(tmp_path / folder),
        )  # fmt: skip
        source = ActivationStream(model, images[:48], LAYER, stream)
        trainer = Trainer([SAETarget("topk", LAYER, TopKConfig(n_concepts=64, k=4))], source, config)
        return trainer.run()

    plain, ahead = run(False, "plain"), run(True, "ahead")
    for key, value in plain.saes["topk"].state_dict().items():
        assert torch.equal(ahead.saes["topk"].state_dict()[key], value), key
    import json

    for step in ("step-000000003", "step-000000006"):
        states = [json.loads((tmp_path / f / step / "trainer.json").read_text()) for f in ("plain", "ahead")]
        assert states[0]["source"] == states[1]["source"], step


def test_cache_reader_splits_shards_between_ranks(tmp_path):
    tokens = torch.randn(1000, 8, generator=torch.Generator().manual_seed(2))
    write_cache(TensorTokenSource(tokens, 100), tmp_path / "c", shard_tokens=200, progress=False)
    whole = CachedTokens(tmp_path / "c", 50)
    parts = [CachedTokens(tmp_path / "c", 50, rank=r, world_size=2) for r in (0, 1)]
    assert whole.shard_ids == [0, 1, 2, 3, 4]
    assert [p.shard_ids for p in parts] == [[0, 2, 4], [1, 3]]
    with pytest.raises(ValueError, match="5 shard\\(s\\) for 8 ranks"):
        CachedTokens(tmp_path / "c", 50, rank=0, world_size=8)
    seen = 0
    for part in parts:
        while (batch := part.next_batch()) is not None:
            seen += batch["tokens"].shape[0]
    assert seen == 1000


def test_bench_gpu_runs_its_cpu_smoke_sizes(tmp_path, capsys, monkeypatch):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gpu", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    assert bench.main(["--cpu-smoke", "--out", str(tmp_path / "out.json")]) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert {r["family"] for r in result["step"]} == {"topk", "batchtopk", "mp", "rasae"}
    assert all(r["tokens_per_s"] > 0 for r in result["step"] if r["precision"] == "fp32")
    assert [r["saes"] for r in result["capture"]] == [0, 1, 4, 0, 1, 4]
    assert "| SAE step |" in capsys.readouterr().out
    assert bench.peak_tflops(__import__("torch").device("cpu")) is None
