"""Encode and decode with a saved probe_sae SAE using only json, safetensors and torch.

A saved SAE is a folder holding ``config.json`` and ``model.safetensors`` (format
``probe_sae.sae``, version 2; see docs/concepts/sae-format.md). This file reimplements
``sae.encode`` / ``sae.decode`` of every family from those two files alone: ReLU, TopK,
BatchTopK (inference threshold), JumpReLU, MP-SAE (matching pursuit), Matryoshka (its
encoder's rule), each over a free or an archetypal (A-SAE / RA-SAE) dictionary.

    python encode_without_probe_sae.py SAE_FOLDER [ACTS.safetensors]

encodes the tensor ``acts`` (N, d) of ACTS.safetensors (default: 8 random tokens) and prints
the number of active concepts per token and the relative reconstruction error.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

FORMAT, FORMAT_VERSION = "probe_sae.sae", 2


def load_folder(folder):
    """(config dict, {tensor name: tensor}) of a saved probe_sae SAE."""
    config = json.loads((Path(folder) / "config.json").read_text())
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder} is not a probe_sae SAE of format version {FORMAT_VERSION}")
    return config, load_file(str(Path(folder) / "model.safetensors"))


def atoms(tensors):
    """(n_concepts, d) dictionary D: free atoms, or archetypal D = W @ C (+ Λ)."""
    if "decoder.weight" in tensors:
        return tensors["decoder.weight"]
    atoms_CD = tensors["decoder.weights"] @ tensors["decoder.candidates"]
    if "decoder.relaxation" in tensors:  # RA-SAE
        atoms_CD = atoms_CD + tensors["decoder.relaxation"]
    return atoms_CD


def centre(tensors, x_ND):
    """Raw activations -> x_n - b_pre, with x_n = (x - input_mean) / input_scale."""
    x_n = (x_ND - tensors["input_mean"]) / tensors["input_scale"]
    return x_n - tensors["b_pre"]


def encode(config, tensors, x_ND):
    """(N, d) raw activations -> (N, n_concepts) dense codes."""
    x_c = centre(tensors, x_ND.to(tensors["b_pre"].dtype))
    family = config["family"]
    if family == "matryoshka":  # at inference a Matryoshka SAE is its encoder
        family = config["activation"]
    if family == "mp":
        return matching_pursuit(config, x_c, atoms(tensors))
    pre = x_c @ tensors["W_enc"].T + tensors["b_enc"]  # (N, n_concepts)
    if family == "relu":
        return torch.relu(pre)
    if family == "topk":  # ReLU of each token's k largest pre-activations
        values, indices = pre.topk(config["k"], dim=1)
        return torch.zeros_like(pre).scatter(1, indices, torch.relu(values))
    if family == "batchtopk":  # the inference rule: one threshold θ learned in training
        if int(tensors["threshold_updates"]) == 0:
            raise ValueError("this BatchTopK SAE has no inference threshold yet (never trained)")
        return pre * (pre > tensors["threshold"])
    if family == "jumprelu":  # one threshold per concept, θ = exp(log θ)
        return pre * (pre > tensors["log_threshold"].exp())
    raise ValueError(f"unknown SAE family {family!r}")


def matching_pursuit(config, x_c, atoms_CD):
    """k greedy steps: pick j = argmax ReLU(D r), add c = <D_j, r> to z_j, r -= c D_j.

    A token stops early when its best correlation is not positive; and, if the config says
    so, before a step once ‖r‖ < residual_threshold (× ‖x_c‖ in "relative" mode), or after
    the first step that picks an atom it had already picked.
    """
    n_tokens, rows = x_c.shape[0], torch.arange(x_c.shape[0])
    threshold = config.get("residual_threshold", 0.0)
    if config.get("threshold_mode", "relative") == "relative":
        min_norm = threshold * x_c.norm(dim=1)
    else:
        min_norm = torch.full((n_tokens,), threshold, dtype=x_c.dtype)
    codes = x_c.new_zeros(n_tokens, atoms_CD.shape[0])
    chosen = torch.zeros(codes.shape, dtype=torch.bool)
    running = torch.ones(n_tokens, dtype=torch.bool)
    residual = x_c
    for _ in range(config["k"]):
        if threshold > 0:
            running &= residual.norm(dim=1) >= min_norm
        best, j = (residual @ atoms_CD.T).max(dim=1)
        running &= best > 0
        atom = atoms_CD[j]  # (N, d)
        coef = (residual * atom).sum(dim=1) * running
        codes[rows, j] += coef
        residual = residual - coef.unsqueeze(1) * atom
        if config.get("stop_on_reselect", False):
            reselected = chosen[rows, j] & running
            chosen[rows, j] |= running
            running &= ~reselected
    return codes


def decode(config, tensors, codes_NC):
    """(N, n_concepts) codes -> (N, d) reconstruction of the raw activations."""
    x_n = codes_NC.to(tensors["b_pre"].dtype) @ atoms(tensors) + tensors["b_pre"]
    return x_n * tensors["input_scale"] + tensors["input_mean"]


def main(argv):
    config, tensors = load_folder(argv[0])
    d = tensors["b_pre"].shape[0]
    x = load_file(argv[1])["acts"] if len(argv) > 1 else torch.randn(8, d)
    codes = encode(config, tensors, x)
    x_hat = decode(config, tensors, codes)
    print(f"{config['family']}: {codes.shape[1]} concepts, width {d}")
    print("active concepts per token:", (codes != 0).sum(dim=1).tolist())
    print("relative error ||x - x_hat|| / ||x||:", float((x - x_hat).norm() / x.norm()))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
