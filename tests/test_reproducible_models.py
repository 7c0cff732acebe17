"""Random-weight models rebuild identically in every process (issue 20), and pretrained weights
that are not cached fail fast when offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from probe_sae import load_model
from probe_sae.cli import UsageError, _model_for, main
from probe_sae.metrics import evaluate
from probe_sae.models.offline import OfflineError, unreachable
from probe_sae.saes import load_sae
from probe_sae.stream.activations import ActivationStream

HASH_SCRIPT = """
import hashlib, sys
from probe_sae import load_model
model = load_model("open_clip:ViT-B-32", force_image_size=64)
digest = hashlib.sha256()
for key, value in sorted(model.module.state_dict().items()):
    digest.update(key.encode()); digest.update(value.float().numpy().tobytes())
print(digest.hexdigest(), model.random_weights, model.seed)
"""
TIMM = "timm:vit_tiny_patch16_224"
REBUILT = "randomly initialised network rebuilt from seed"


def _state_hash(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(model.module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.float().numpy().tobytes())
    return digest.hexdigest()


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", **extra}


def test_two_processes_build_the_same_random_open_clip():
    runs = [
        subprocess.Popen([sys.executable, "-c", HASH_SCRIPT], stdout=subprocess.PIPE, text=True, env=_env())
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert outputs[0] == outputs[1]
    assert outputs[0][1:] == ["True", "0"]


def test_seed_changes_the_network_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seed0 = load_model(TIMM)
    after = torch.rand(3)
    seed3 = load_model(TIMM, seed=3)
    assert torch.equal(after, expected)
    assert (seed0.random_weights, seed0.seed, seed3.seed) == (True, 0, 3)
    assert _state_hash(seed0) != _state_hash(seed3)
    assert _state_hash(load_model(TIMM, seed=3)) == _state_hash(seed3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A TopK SAE trained by ``probe-sae train`` in this process on a random-weight ViT."""
    root = tmp_path_factory.mktemp("reproducible")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    argv = [
        "train", TIMM, "--layer", "blocks.5", "--images", str(images), "--max-steps", "3",
        "--batch-size", "64", "--init-tokens", "256", "--n-concepts", "64", "--k", "4",
        "--out", str(root / "run"), "--no-progress",
    ]
    torch.manual_seed(987)  # the training network must not depend on the caller's RNG state
    assert main(argv) == 0
    return root / "run" / "topk", images


def test_provenance_records_random_weights_and_seed(trained):
    sae = load_sae(trained[0])
    assert sae.provenance["model"] == TIMM
    assert (sae.provenance["random_weights"], sae.provenance["seed"]) == (True, 0)


def test_eval_in_another_process_scores_the_training_network(trained, tmp_path):
    folder, images = trained
    out = tmp_path / "eval.json"
    done = subprocess.run(
        [sys.executable, "-m", "probe_sae.cli", "eval", str(folder), "--images", str(images),
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=_env(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{REBUILT} 0" in done.stderr
    fvu_other = json.loads(out.read_text())["topk"]["evaluation"]["fvu"]
    sae = load_sae(folder)
    model = load_model(TIMM, seed=sae.provenance["seed"])
    stream = ActivationStream(
        model, str(images), "blocks.5", batch_size=4096, provenance=True, drop_last=False
    )
    fvu_here = evaluate(sae, stream, layout=model.layout).fvu
    assert fvu_other == pytest.approx(fvu_here, abs=1e-4)


def _fake_sae(**provenance) -> SimpleNamespace:
    return SimpleNamespace(provenance={"model": TIMM, **provenance})


def test_reload_passes_the_recorded_seed_and_warns(capsys):
    model = _model_for({"a": _fake_sae(random_weights=True, seed=3)}, None)
    assert (model.random_weights, model.seed) == (True, 3)
    assert f"{REBUILT} 3" in capsys.readouterr().err


def test_reload_refuses_a_seed_it_cannot_honour(tmp_path):
    checkpoint = tmp_path / "vit.pth"
    torch.save(load_model(TIMM).module.state_dict(), checkpoint)
    spec = f"{TIMM}@{checkpoint}"  # loads saved weights: a random seed cannot apply
    with pytest.raises(UsageError, match="retrain"):
        _model_for({"a": _fake_sae(model=spec, random_weights=True, seed=3)}, None)
    with pytest.raises(UsageError, match="different seeds"):
        _model_for({"a": _fake_sae(random_weights=True, seed=0),
                    "b": _fake_sae(random_weights=True, seed=1)}, None)


def test_offline_pretrained_tag_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OfflineError, match=r"HF_HUB_OFFLINE=1 is set.*hf download laion/"):
        load_model("open_clip:ViT-B-32/laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5


def test_unreachable_host_is_reported_without_retries(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    start = time.perf_counter()
    reason = unreachable("https://127.0.0.1:9")  # the discard port: nothing listens
    assert reason is not None and "127.0.0.1 cannot be reached" in reason
    assert time.perf_counter() - start < 5
