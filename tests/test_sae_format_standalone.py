"""Our SAE format is documented well enough to reimplement: the standalone example
``docs/examples/encode_without_probe_sae.py`` (json + safetensors + torch only, no probe_sae)
reads saved SAEs of every family and computes the codes and reconstructions ``sae.encode`` /
``sae.decode`` compute; and the format page shows that very file."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probe_sae import available_families, build_sae, kmeans

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "examples" / "encode_without_probe_sae.py"
PAGE = ROOT / "docs" / "concepts" / "sae-format.md"
D, C = 12, 40


@pytest.fixture(scope="module")
def standalone():
    """The example script, imported by path (it must not import probe_sae)."""
    spec = importlib.util.spec_from_file_location("encode_without_probe_sae", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mp_options() -> dict[str, dict]:
    """MP-SAE variants: plain k steps, and the early-stopping rules where MPConfig has them."""
    from probe_sae import MPConfig

    fields = {f.name for f in dataclasses.fields(MPConfig)}
    variants = {"mp": {}}
    if "stop_on_reselect" in fields:
        variants["mp-reselect"] = {"stop_on_reselect": True, "k": 8}
    if {"residual_threshold", "threshold_mode"} <= fields:
        variants["mp-relative"] = {"residual_threshold": 0.5, "k": 8}
        variants["mp-absolute"] = {"residual_threshold": 1.0, "threshold_mode": "absolute", "k": 8}
    return variants


CASES = {
    "topk": ("topk", {"k": 4}),
    "rasae": ("rasae", {"k": 4}),
    "asae": ("asae", {"k": 4}),
    "relu": ("relu", {}),
    "batchtopk": ("batchtopk", {"k": 4}),
    "jumprelu": ("jumprelu", {"init_threshold": 0.05}),
    **{name: ("mp", {"k": 4, **options}) for name, options in _mp_options().items()},
}
if "matryoshka" in available_families():
    CASES["matryoshka"] = ("matryoshka", {"k": 4})


def _trained(name: str, dtype: torch.dtype = torch.float32):
    """An SAE after a few optimiser steps on standardised data, with perturbed biases."""
    family, fields = CASES[name]
    torch.manual_seed(0)
    x = torch.randn(256, D) * torch.linspace(0.5, 3, D) + torch.linspace(-2, 2, D)
    if family in ("asae", "rasae"):
        fields = {**fields, "candidates": kmeans(x, 48, seed=0)}
    sae = build_sae(family, D, C, seed=1, **fields)
    sae.set_normalization(x.mean(0), x.std(0), "standardize")
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        sae(x).loss.backward()
        sae.prepare_gradients()
        opt.step()
        sae.apply_constraints()
    with torch.no_grad():
        sae.b_pre.add_(0.1 * torch.randn(D))
        if hasattr(sae, "b_enc"):
            sae.b_enc.add_(0.05 * torch.randn(C))
    return sae.eval().to(dtype), x.to(dtype)


@pytest.mark.parametrize("name", list(CASES))
def test_standalone_script_matches_the_library(name, standalone, tmp_path):
    sae, x = _trained(name)
    sae.save_pretrained(tmp_path / name)
    config, tensors = standalone.load_folder(tmp_path / name)
    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    ours = standalone.encode(config, tensors, x)
    assert (codes != 0).any(dim=1).float().mean() > 0.5, "a trivial SAE tests nothing"
    torch.testing.assert_close(ours, codes, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        standalone.decode(config, tensors, ours), x_hat, atol=1e-5, rtol=1e-6
    )


@pytest.mark.parametrize("name", ["topk", "mp", "rasae"])
def test_standalone_script_in_float64(name, standalone, tmp_path):
    sae, x = _trained(name, torch.float64)
    sae.save_pretrained(tmp_path / name)
    config, tensors = standalone.load_folder(tmp_path / name)
    assert config["dtype"] == "float64" and tensors["b_pre"].dtype == torch.float64
    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    torch.testing.assert_close(standalone.encode(config, tensors, x), codes, atol=1e-10, rtol=0)
    torch.testing.assert_close(standalone.decode(config, tensors, codes), x_hat, atol=1e-10, rtol=0)


def test_script_imports_nothing_but_json_safetensors_and_torch():
    text = SCRIPT.read_text()
    imports = {
        line.split()[1].split(".")[0]
        for line in text.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imports == {"json", "sys", "pathlib", "torch", "safetensors"}, imports
    assert "probe_sae" not in "\n".join(
        line for line in text.splitlines() if line.startswith(("import ", "from "))
    )


def test_script_runs_from_the_command_line(tmp_path):
    sae, x = _trained("rasae")
    sae.save_pretrained(tmp_path / "rasae")
    from safetensors.torch import save_file

    save_file({"acts": x[:5].contiguous()}, str(tmp_path / "acts.safetensors"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "rasae"), str(tmp_path / "acts.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repository: the script must not need probe_sae
    )
    assert proc.returncode == 0, proc.stderr
    assert "topk: 40 concepts, width 12" in proc.stdout
    with torch.no_grad():
        l0 = (sae.encode(x[:5]) != 0).sum(dim=1).tolist()
    assert f"active concepts per token: {l0}" in proc.stdout


def test_the_format_page_shows_the_very_script():
    page = PAGE.read_text()
    assert f"```python\n{SCRIPT.read_text()}```" in page, (
        "docs/concepts/sae-format.md must show docs/examples/encode_without_probe_sae.py "
        "verbatim in a ```python block: paste the file again"
    )
