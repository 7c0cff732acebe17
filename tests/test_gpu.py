"""The CUDA path, once: a tiny SAE trained on the organism with the model and the SAE on the
GPU in bfloat16 (skipped without CUDA; run with ``pytest -m gpu``)."""

from __future__ import annotations

import pytest
import torch

from probe_sae import load_model
from probe_sae.organism import generate
from probe_sae.saes import TopKConfig
from probe_sae.stream import ActivationStream, StreamConfig
from probe_sae.train import SAETarget, TrainConfig, Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.filterwarnings("ignore::probe_sae.train.summary.ShortRunWarning"),
]


def test_tiny_sae_trains_on_cuda_in_bf16():
    model = load_model("organism", device="cuda")
    stream = StreamConfig(batch_size=512, epochs=None, autocast="bfloat16")
    source = ActivationStream(model, generate(128, seed=0).images, "blocks.2", stream)
    config = TrainConfig(max_steps=40, lr=3e-3, init_tokens=2048, progress=False, device="cuda")
    trainer = Trainer([SAETarget("topk", "blocks.2", TopKConfig(n_concepts=256, k=8))], source, config)
    result = trainer.run()
    sae = result.saes["topk"]
    assert sae.b_pre.device.type == "cuda" and sae.b_pre.dtype == torch.float32
    assert trainer._prefetch is None  # closed after the run (it ran: the SAE is on a GPU)
    assert result.summary["topk"].fvu < 0.6
    assert torch.cuda.max_memory_allocated() > 0
