"""SAELens folders in and out (probe_sae.saes.saelens).

Our SAEs written as SAELens 6.x folders and read back give the same codes and reconstructions;
folders written the way SAELens writes them (built here from SAELens's documented ``cfg.json``
keys and tensor names) read as the right family and give the codes of SAELens's forward formula,
written out naively below; what has no exact counterpart raises an error naming what differs.
The ``slow`` test runs SAELens itself when it is installed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from probe_sae import SAEFormatError, build_sae, kmeans, load_sae
from probe_sae.saes import (
    MPSAE,
    BatchTopKSAE,
    JumpReLUSAE,
    ReLUSAE,
    SAELensConversionError,
    SAESaveError,
    TopKSAE,
    load_saelens,
    save_saelens,
)

pytestmark = pytest.mark.usefixtures("one_thread")

D, C = 10, 32
CLASSES = {
    "relu": ReLUSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "mp": MPSAE,
}
ARCHITECTURE = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "mp": "matching_pursuit",
}


def _data() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(300, D) * torch.linspace(0.5, 3, D) + torch.linspace(-2, 2, D)


def _trained(family: str, normalization: str = "standardize", dtype=torch.float32):
    """A few optimiser steps on raw data, then perturbed biases (and, for ReLU, atom norms)."""
    x = _data()
    fields = {"k": 4} if family in ("topk", "batchtopk", "mp") else {}
    if family == "jumprelu":
        fields["init_threshold"] = 0.05
    sae = build_sae(family, D, C, seed=1, **fields)
    if normalization == "standardize":
        sae.set_normalization(x.mean(0), x.std(0), "standardize")
    elif normalization == "center":
        sae.set_normalization(x.mean(0), None, "center")
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        sae(x).loss.backward()
        sae.prepare_gradients()
        opt.step()
        sae.apply_constraints()
    with torch.no_grad():
        sae.b_pre.add_(0.2 * torch.randn(D))
        if hasattr(sae, "b_enc"):
            sae.b_enc.add_(0.05 * torch.randn(C))
        if family == "relu":  # free atom norms
            sae.decoder.weight.mul_(torch.linspace(0.5, 2, C).unsqueeze(1))
    sae.provenance = {"model": "organism", "layer": "blocks.2", "tokens": "all"}
    return sae.eval().to(dtype), x.to(dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------ ours -> SAELens -> ours
@pytest.mark.parametrize("family", list(CLASSES))
def test_round_trip_gives_identical_codes_and_reconstructions(family, tmp_path):
    normalization = "center" if family == "mp" else "standardize"
    sae, x = _trained(family, normalization)
    folder = sae.save_pretrained(tmp_path / family, format="saelens")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == ARCHITECTURE[family]
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (D, C, "float32")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["model_name"] == "organism"
    assert cfg["metadata"]["hook_name"] == "blocks.2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unit-norm atoms come back unit norm: no warning
        back = load_sae(folder)
    assert type(back) is CLASSES[family]
    assert back.config == sae.config and back.normalization == normalization
    assert back.provenance == sae.provenance
    with torch.no_grad():
        codes, back_codes = sae.encode(x), back.encode(x)
        _same(back_codes, codes)
        _same(back.decode(back_codes), sae.decode(codes))
        _same(back(x).x_hat, sae(x).x_hat)
        _same(back.dictionary, sae.dictionary)
    assert (codes != 0).any(dim=1).float().mean() > 0.5, "a trivial SAE tests nothing"


@pytest.mark.parametrize("family", ["topk", "jumprelu"])
def test_round_trip_keeps_the_dtype(family, tmp_path):
    sae, x = _trained(family, dtype=torch.float64)
    save_saelens(sae, tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["dtype"] == "float64"
    back = load_saelens(tmp_path / "sae")
    assert back.b_pre.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), sae.encode(x), atol=1e-12, rtol=0)
        torch.testing.assert_close(back(x).x_hat, sae(x).x_hat, atol=1e-12, rtol=0)


def test_written_folder_computes_saelens_forward(tmp_path):
    """The exported weights, run through SAELens's formula, give our codes (normalisation
    folded in: SAELens takes the raw activations)."""
    for family in ("relu", "topk", "jumprelu", "batchtopk"):
        sae, x = _trained(family, dtype=torch.float64)
        save_saelens(sae, tmp_path / family)
        cfg, tensors = _read(tmp_path / family)
        codes, x_hat = saelens_forward(cfg, tensors, x)
        with torch.no_grad():
            _same(codes, sae.encode(x))
            _same(x_hat, sae(x).x_hat)


def test_batchtopk_is_written_as_jumprelu_with_its_threshold(tmp_path):
    sae, _ = _trained("batchtopk")
    save_saelens(sae, tmp_path / "b")
    _, tensors = _read(tmp_path / "b")
    assert torch.equal(tensors["threshold"], sae.threshold.expand(C))


# ------------------------------------------------------------------- folders SAELens writes
def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return json.loads((folder / "cfg.json").read_text()), load_file(
        str(folder / "sae_weights.safetensors")
    )


def _write(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    return folder


def _saelens_cfg(architecture: str, **extra) -> dict:
    """``cfg.json`` as SAELens 6.x ``SAE.save_model`` writes it (``SAEConfig.to_dict()``)."""
    return {
        "d_in": D,
        "d_sae": C,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.54.12",
            "sae_lens_training_version": "6.54.12",
            "model_name": "gpt2-small",
            "hook_name": "blocks.8.hook_resid_pre",
        },
        **extra,
        "architecture": architecture,
    }


def _saelens_tensors(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random SAELens weights: ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), non-unit rows."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(C, D, generator=g) * torch.linspace(0.3, 2, C).unsqueeze(1) / D**0.5
    tensors = {"b_dec": torch.randn(D, generator=g) * 0.5, "W_dec": w_dec}
    if architecture == "matching_pursuit":
        tensors["W_dec"] = w_dec / w_dec.norm(dim=1, keepdim=True)
        return tensors
    tensors["W_enc"] = torch.randn(D, C, generator=g) / D**0.5
    tensors["b_enc"] = torch.randn(C, generator=g) * 0.1
    if architecture == "jumprelu":
        tensors["threshold"] = torch.rand(C, generator=g) * 0.5
        tensors["threshold"][:3] = torch.tensor([0.0, -0.1, 0.2])  # θ <= 0 acts as plain ReLU
    if architecture == "batchtopk":
        tensors["topk_threshold"] = torch.tensor(0.3, dtype=torch.float64)
    return tensors


def saelens_forward(cfg: dict, t: dict[str, torch.Tensor], u: torch.Tensor, k_scale: float = 1.0):
    """SAELens's forward, naively (``process_sae_in`` / ``encode`` / ``decode``), in float64:
    returns (codes, reconstruction) of raw inputs ``u``, which it multiplies by ``k_scale``
    first (the constant of ``normalize_activations="expected_average_only_in"``)."""
    t = {k: v.double() for k, v in t.items()}
    u = u.double() * k_scale
    architecture = cfg["architecture"]
    sae_in = u - t["b_dec"] * cfg["apply_b_dec_to_input"]
    if architecture == "matching_pursuit":
        codes = naive_saelens_mp(sae_in, t["W_dec"], cfg)
        out = codes @ t["W_dec"] + (t["b_dec"] if cfg["apply_b_dec_to_input"] else 0)
        return codes, out / k_scale
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    norms = t["W_dec"].norm(dim=1)
    rescale = cfg.get("rescale_acts_by_decoder_norm", False)
    if rescale:
        pre = pre * norms
    if architecture == "standard":
        codes = torch.relu(pre)
    elif architecture == "topk":
        values, indices = pre.topk(cfg["k"], dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    elif architecture == "jumprelu":
        codes = torch.relu(pre) * (pre > t["threshold"])
    elif architecture == "batchtopk":  # inference: its threshold, as saved for inference
        codes = torch.relu(pre) * (pre > t["topk_threshold"])
    out = (codes / norms if rescale else codes) @ t["W_dec"] + t["b_dec"]
    return codes, out / k_scale


def naive_saelens_mp(sae_in: torch.Tensor, w_dec: torch.Tensor, cfg: dict) -> torch.Tensor:
    """SAELens's ``_encode_matching_pursuit`` loop, recomputing every correlation."""
    residual = sae_in.clone()
    acts = torch.zeros(sae_in.shape[0], w_dec.shape[0], dtype=sae_in.dtype)
    prev = torch.zeros_like(acts, dtype=torch.bool)
    done = torch.zeros(sae_in.shape[0], dtype=torch.bool)
    for _ in range(cfg.get("max_iterations") or sae_in.shape[1]):
        j = (residual @ w_dec.T).relu().max(dim=1, keepdim=True).indices
        atom = w_dec[j.squeeze(1)]
        value = (residual * atom).sum(dim=-1, keepdim=True).relu() * (~done).unsqueeze(1)
        acts.scatter_add_(1, j, value)
        residual = residual - value * atom
        if cfg.get("stop_on_duplicate_support"):
            support = acts != 0
            done |= (support == prev).all(dim=1)
            prev = support
    return acts


SAELENS_CASES = {
    "standard": ("standard", {}, ReLUSAE),
    "standard-no-b_dec-input": ("standard", {"apply_b_dec_to_input": False}, ReLUSAE),
    "topk": ("topk", {"k": 5, "rescale_acts_by_decoder_norm": False}, TopKSAE),
    "topk-rescaled": ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}, TopKSAE),
    "jumprelu": ("jumprelu", {}, JumpReLUSAE),
    "batchtopk-checkpoint": (
        "batchtopk",
        {"k": 5.0, "rescale_acts_by_decoder_norm": True, "topk_threshold_lr": 0.01},
        BatchTopKSAE,
    ),
    "matching_pursuit": (
        "matching_pursuit",
        {"residual_threshold": 0.0, "max_iterations": 6, "stop_on_duplicate_support": False},
        MPSAE,
    ),
}


@pytest.mark.parametrize("case", list(SAELENS_CASES))
def test_saelens_folder_reads_as_our_family_with_saelens_codes(case, tmp_path):
    architecture, extra, cls = SAELENS_CASES[case]
    cfg, tensors = _saelens_cfg(architecture, **extra), _saelens_tensors(architecture)
    folder = _write(tmp_path / case, cfg, tensors)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sae = load_sae(folder, dtype=torch.float64)  # float32 weights, exact in float64
    assert type(sae) is cls and sae.n_concepts == C and sae.d_model == D
    # decoder rows not unit norm, unless SAELens's rescaling folded them (then they are)
    unit = architecture == "matching_pursuit" or extra.get("rescale_acts_by_decoder_norm")
    warned = any("not unit norm" in str(w.message) for w in caught)
    assert warned == (cls is not ReLUSAE and not unit)
    assert sae.provenance["saelens"]["metadata"]["model_name"] == "gpt2-small"
    assert sae.provenance["saelens"]["metadata"]["hook_name"] == "blocks.8.hook_resid_pre"
    assert sae.provenance["saelens"]["architecture"] == architecture
    x = _data().double()
    codes, x_hat = saelens_forward(cfg, tensors, x)
    with torch.no_grad():
        _same(sae.encode(x), codes)
        _same(sae.decode(sae.encode(x)), x_hat)
    assert (codes != 0).any(dim=1).float().mean() > 0.5, "a trivial SAE tests nothing"


def test_saelens_topk_and_jumprelu_keep_their_parameters(tmp_path):
    with pytest.warns(UserWarning, match="not unit norm"):
        topk = load_sae(_write(tmp_path / "t", _saelens_cfg("topk", k=7), _saelens_tensors("topk")))
    assert topk.k == 7 and topk.config.k == 7
    tensors = _saelens_tensors("jumprelu")
    with pytest.warns(UserWarning, match="not unit norm"):
        jump = load_sae(_write(tmp_path / "j", _saelens_cfg("jumprelu"), tensors))
    expected = tensors["threshold"].clamp_min(0)
    torch.testing.assert_close(jump.threshold.detach(), expected, atol=1e-7, rtol=1e-6)


def test_matching_pursuit_stop_on_duplicate_support(tmp_path):
    from probe_sae import MPConfig

    if "stop_on_reselect" not in {f.name for f in __import__("dataclasses").fields(MPConfig)}:
        pytest.skip("this MP-SAE has no stop_on_reselect rule")
    extra = {"residual_threshold": 0.0, "max_iterations": 12, "stop_on_duplicate_support": True}
    cfg, tensors = _saelens_cfg("matching_pursuit", **extra), _saelens_tensors("matching_pursuit")
    sae = load_sae(_write(tmp_path / "mp", cfg, tensors), dtype=torch.float64)
    assert sae.config.stop_on_reselect and sae.k == 12
    x = _data().double()
    codes, x_hat = saelens_forward(cfg, tensors, x)
    with torch.no_grad():
        _same(sae.encode(x), codes)
        _same(sae.decode(sae.encode(x)), x_hat)
    save_saelens(sae, tmp_path / "again")
    assert _read(tmp_path / "again")[0]["stop_on_duplicate_support"] is True


def test_expected_average_only_in_needs_its_scaling_factor(tmp_path):
    cfg = _saelens_cfg("topk", k=5, normalize_activations="expected_average_only_in")
    tensors = _saelens_tensors("topk")
    folder = _write(tmp_path / "s", cfg, tensors)
    with pytest.raises(SAELensConversionError, match="norm_scaling_factor"):
        load_sae(folder)
    with pytest.warns(UserWarning, match="not unit norm"):
        sae = load_saelens(folder, dtype=torch.float64, norm_scaling_factor=0.25)
    assert sae.normalization == "expected_average_only_in"
    x = _data().double()
    codes, x_hat = saelens_forward(cfg, tensors, x, k_scale=0.25)  # SAELens on x · factor
    with torch.no_grad():
        _same(sae.encode(x), codes)
        _same(sae(x).x_hat, x_hat)  # back in raw units, as SAE.from_pretrained folds it


@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale", "covariance_whitening"])
def test_per_token_normalisations_are_refused(norm, tmp_path):
    cfg = _saelens_cfg("standard", normalize_activations=norm)
    folder = _write(tmp_path / norm, cfg, _saelens_tensors("standard"))
    with pytest.raises(SAELensConversionError, match=f"normalize_activations is '{norm}'"):
        load_sae(folder)


def test_pre_6_layout_is_read(tmp_path):
    """SAELens < 6 wrote hook_point, activation_fn_str / activation_fn_kwargs, a boolean
    normalize_activations and metadata at the top level."""
    cfg = {
        "d_in": D,
        "d_sae": C,
        "dtype": "torch.float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_point": "blocks.3.hook_resid_pre",
        "hook_point_layer": 3,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 6},
        "normalize_activations": False,
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": "3.13.0",
    }
    tensors = _saelens_tensors("topk")
    with pytest.warns(UserWarning, match="not unit norm"):
        sae = load_sae(_write(tmp_path / "old", cfg, tensors), dtype=torch.float64)
    assert isinstance(sae, TopKSAE) and sae.k == 6
    assert sae.provenance["saelens"]["metadata"]["hook_name"] == "blocks.3.hook_resid_pre"
    assert sae.provenance["saelens"]["metadata"]["model_name"] == "gpt2-small"
    x = _data().double()
    codes, _ = saelens_forward(_saelens_cfg("topk", k=6), tensors, x)
    with torch.no_grad():
        _same(sae.encode(x), codes)


# ------------------------------------------------------------------------------ what fails
def test_mp_with_a_per_dimension_scale_is_refused(tmp_path):
    sae, _ = _trained("mp", "standardize")
    with pytest.raises(SAELensConversionError, match=r"tied to its decoder.*save_pretrained"):
        sae.save_pretrained(tmp_path / "mp", format="saelens")
    assert not (tmp_path / "mp").exists()


@pytest.mark.parametrize("family", ["asae", "rasae"])
def test_archetypal_export_is_refused_unless_materialised(family, tmp_path):
    x = _data()
    sae = build_sae(family, D, C, seed=1, k=4, candidates=kmeans(x, 40, seed=0))
    sae.set_normalization(x.mean(0), x.std(0), "standardize")
    sae.eval()
    with pytest.raises(SAELensConversionError, match=r"archetypal.*save_pretrained\(path\)"):
        sae.save_pretrained(tmp_path / family, format="saelens")
    assert not (tmp_path / family).exists()
    save_saelens(sae, tmp_path / family, materialize_archetypal=True)
    with pytest.warns(UserWarning, match="not unit norm"):  # W·C atoms, now a TopK decoder
        back = load_sae(tmp_path / family)
    assert isinstance(back, TopKSAE) and back.config.archetypal is None
    with torch.no_grad():
        _same(back.encode(x), sae.encode(x))
        _same(back(x).x_hat, sae(x).x_hat)


def test_untrained_batchtopk_is_refused(tmp_path):
    sae = build_sae("batchtopk", D, C, k=4)
    with pytest.raises(SAELensConversionError, match=r"no inference threshold.*train it first"):
        save_saelens(sae, tmp_path / "b")


def test_unknown_format_names_the_choices(tmp_path):
    sae, _ = _trained("topk")
    with pytest.raises(ValueError, match=r"'probe_sae'.*'saelens'"):
        sae.save_pretrained(tmp_path / "x", format="safetensors")


MALFORMED = {
    "not json": ("{d_in: 3", "not valid JSON"),
    "a list": ("[1, 2]", "JSON list, not an SAELens config object"),
    "no d_sae": ({"d_sae": None}, "d_sae is None, not a positive integer"),
    "gated": ({"architecture": "gated"}, "architecture 'gated' has no probe_sae equivalent"),
    "dtype": ({"dtype": "int8"}, "dtype is 'int8'"),
    "k too large": ({"architecture": "topk", "k": C + 1}, "k is 33"),
    "metadata": ({"metadata": [1]}, "metadata is \\[1\\], not an object"),
    "version": ({"metadata": {"sae_lens_version": "latest"}}, "sae_lens_version is 'latest'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_cfg_names_the_problem(case, tmp_path):
    change, message = MALFORMED[case]
    folder = _write(tmp_path / "f", _saelens_cfg("standard"), _saelens_tensors("standard"))
    if isinstance(change, str):
        (folder / "cfg.json").write_text(change)
    else:
        cfg = _saelens_cfg("standard")
        cfg.update(change)
        (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match=message) as info:
        load_sae(folder)
    assert "cfg.json" in str(info.value)


def test_weights_that_do_not_match_cfg(tmp_path):
    tensors = _saelens_tensors("standard")
    del tensors["b_enc"]
    folder = _write(tmp_path / "a", _saelens_cfg("standard"), tensors)
    with pytest.raises(SAEFormatError, match=r"missing \['b_enc'\]"):
        load_sae(folder)
    tensors = _saelens_tensors("standard")
    tensors["W_enc"] = tensors["W_enc"].T  # our layout, not SAELens's (d_in, d_sae)
    folder = _write(tmp_path / "b", _saelens_cfg("standard"), tensors)
    with pytest.raises(SAEFormatError, match=r"W_enc has shape \(32, 10\), expected \(10, 32\)"):
        load_sae(folder)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cfg.json").write_text(json.dumps(_saelens_cfg("standard")))
    with pytest.raises(SAEFormatError, match=r"no sae_weights\.safetensors"):
        load_sae(tmp_path / "c")


def test_folders_of_both_formats_stay_apart(tmp_path):
    sae, _ = _trained("topk")
    sae.save_pretrained(tmp_path / "ours")
    with pytest.raises(SAESaveError, match=r"holds a config\.json"):
        sae.save_pretrained(tmp_path / "ours", format="saelens")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "cfg.json").write_text(json.dumps({"vocab_size": 3}))
    with pytest.raises(SAESaveError, match="not an SAELens SAE's"):
        save_saelens(sae, tmp_path / "model")


def test_failed_write_keeps_the_previous_folder(tmp_path, monkeypatch):
    first, _ = _trained("topk")
    save_saelens(first, tmp_path / "s")
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    second, _ = _trained("relu")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("probe_sae.saes.saelens.save_file", disk_full)
    with pytest.raises(SAESaveError, match="disk is full"):
        save_saelens(second, tmp_path / "s")
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before
    assert isinstance(load_sae(tmp_path / "s"), TopKSAE)


# -------------------------------------------------------------------------- SAELens itself
@pytest.mark.slow
def test_saelens_loads_our_export_and_we_load_its_folders(tmp_path):
    """With SAELens installed: SAE.load_from_disk on our folders gives our codes, and folders
    SAELens saves read back as the same SAE. In float64, so that the two libraries' float32
    rounding (different orders of operations) does not hide or fake a difference."""
    sae_lens = pytest.importorskip("sae_lens")
    for family in CLASSES:
        normalization = "center" if family == "mp" else "standardize"
        sae, x = _trained(family, normalization, dtype=torch.float64)
        save_saelens(sae, tmp_path / family)
        lens = sae_lens.SAE.load_from_disk(str(tmp_path / family))
        assert lens.cfg.architecture() == ARCHITECTURE[family] and lens.dtype == torch.float64
        with torch.no_grad():
            codes = sae.encode(x)
            _same(lens.encode(x), codes)
            _same(lens.decode(lens.encode(x)), sae.decode(codes))
        lens.save_model(str(tmp_path / f"{family}-resaved"))
        back = load_sae(tmp_path / f"{family}-resaved")
        assert type(back) is CLASSES[family]
        with torch.no_grad():
            _same(back.encode(x), codes)
    for case, (architecture, extra, cls) in SAELENS_CASES.items():
        if architecture == "batchtopk":
            continue  # a training checkpoint: SAE.load_from_disk reads inference SAEs only
        folder = _write(
            tmp_path / f"native-{case}",
            _saelens_cfg(architecture, **extra),
            _saelens_tensors(architecture),
        )
        lens = sae_lens.SAE.load_from_disk(str(folder), dtype="float64")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = load_sae(folder, dtype=torch.float64)
        assert type(ours) is cls
        x = _data().double()
        with torch.no_grad():
            _same(ours.encode(x), lens.encode(x))
            _same(ours.decode(ours.encode(x)), lens.decode(lens.encode(x)))
