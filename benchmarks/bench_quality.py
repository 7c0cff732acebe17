"""Train our SAEs and the anchor library's (overcomplete 0.3.0) side by side, same tokens.

For each dataset, family and step count, both libraries train on the same token tensor with the
same number of steps, batch size and seed, each with its own defaults (ours: AdamW lr 5e-4,
warm-up and cosine decay, per-dimension standardisation inside the SAE; overcomplete: Adam lr
5e-4 constant, fed the standardised tokens, as its JumpSAE docstring asks). Both are then
scored by one function on held-out tokens (the last 10 % of images) in raw activation space:
FVU (float64, the design notes' definition), L0, and dead fraction (never fired on the set).

Families: ours TopK, BatchTopK, JumpReLU, ReLU, MP-SAE, A-SAE, RA-SAE against overcomplete's
TopKSAE, BatchTopKSAE, JumpSAE (mse_l1 loss), SAE (linear encoder, mse_l1 loss), MpSAE,
RATopKSAE with δ = 0 and δ = 1 (its candidates: our k-means of the standardised training tokens,
``max(n_concepts, min(4 n_concepts, tokens))`` of them, as ours). Dictionary: 8 × width
concepts; k = 16 for the k-families (both libraries).

Datasets: the organism's ``blocks.2`` tokens (4,096 synthetic images), scikit-learn digits
(64-d), an open_clip ViT-B-32 with random weights (1,000 random uint8 images, CLS + patches of
the last block). The tokens are written to a temporary ``.safetensors`` file; the anchor trains
in its own process, in its own virtual environment::

    python -m venv --system-site-packages /tmp/oc-venv
    /tmp/oc-venv/bin/pip install overcomplete==0.3.0 "matplotlib<3.9"

(``import overcomplete`` breaks on matplotlib >= 3.9, hence the pin; the system environment is
left untouched.) Without that interpreter, or when it cannot import overcomplete, the anchor's
rows say why.

    python benchmarks/bench_quality.py --quick --datasets organism,digits   # 300 steps
    python benchmarks/bench_quality.py                                      # 300 / 1,500 / 5,000
    python benchmarks/bench_quality.py --anchor-python /path/to/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ANCHOR_PYTHON = "/tmp/oc-venv/bin/python"
DATASETS = ("organism", "digits", "clip")
FAMILIES = ("topk", "batchtopk", "jumprelu", "relu", "mp", "asae", "rasae")
STEPS, QUICK_STEPS = (300, 1500, 5000), (300,)
K, EXPANSION, SEED, MAX_BATCH, HELD_OUT = 16, 8, 0, 1024, 0.1


# ----------------------------------------------------------------------------- tokens
def organism_tokens(n_images: int = 4096) -> tuple[torch.Tensor, int]:
    """(N, d) ``blocks.2`` tokens of the organism on its synthetic images; tokens per image."""
    from probe_sae import load_model
    from probe_sae.hooks import capture
    from probe_sae.organism import generate

    model, images = load_model("organism"), generate(n_images, seed=SEED).images
    parts = [
        capture(model, images[i : i + 256], "blocks.2")["blocks.2"] for i in range(0, n_images, 256)
    ]
    return torch.cat([p.acts.float() for p in parts]), parts[0].tokens_per_image


def digits_tokens() -> tuple[torch.Tensor, int]:
    """(1797, 64) scikit-learn digits; one token per image."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data, dtype=torch.float32), 1


def clip_tokens(n_images: int = 1000) -> tuple[torch.Tensor, int]:
    """(N, 768) last-block tokens (CLS and patches) of an open_clip ViT-B-32 with random
    weights (seeded) on random uint8 images."""
    from probe_sae import load_model
    from probe_sae.hooks import capture

    model = load_model("open_clip:ViT-B-32")
    g = torch.Generator().manual_seed(SEED)
    images = torch.randint(0, 256, (n_images, 3, 224, 224), dtype=torch.uint8, generator=g)
    parts = []
    for i in range(0, n_images, 50):
        pixels = (images[i : i + 50].float() / 255 - 0.5) / 0.25
        parts.append(capture(model, pixels, "blocks.11")["blocks.11"])
    return torch.cat([p.acts.float() for p in parts]), parts[0].tokens_per_image


def split(x: torch.Tensor, per_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train / held-out tokens: the last HELD_OUT of the images are held out."""
    n_images = x.shape[0] // per_image
    cut = (n_images - max(1, round(HELD_OUT * n_images))) * per_image
    return x[:cut].contiguous(), x[cut:].contiguous()


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def score(x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor) -> dict[str, float]:
    """FVU (Σ‖x − x̂‖² / Σ‖x − x̄‖², float64), L0 and dead fraction on one held-out set."""
    x, x_hat = x.double(), x_hat.double()
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum())
    active = codes != 0
    return {
        "fvu": fvu,
        "l0": float(active.sum(dim=1).double().mean()),
        "dead": float((~active.any(dim=0)).double().mean()),
    }


def batch_size(n_train: int) -> int:
    return min(MAX_BATCH, max(n_train // 4, 1))


def n_candidates(n_concepts: int, n_tokens: int) -> int:
    return max(n_concepts, min(4 * n_concepts, n_tokens))


# ----------------------------------------------------------------------------- ours
def train_ours(family: str, train: torch.Tensor, test: torch.Tensor, steps: int) -> dict:
    from probe_sae.saes import family_config
    from probe_sae.stream import TensorTokenSource
    from probe_sae.train import SAETarget, TrainConfig, Trainer

    fields = {"k": K} if family in ("topk", "batchtopk", "mp", "asae", "rasae") else {}
    config = family_config(family, seed=SEED, **fields)
    source = TensorTokenSource(train, batch_size(train.shape[0]), epochs=None, seed=SEED)
    cfg = TrainConfig(max_steps=steps, progress=False, log_every=steps, summary_tokens=0)
    start = time.perf_counter()
    sae = Trainer([SAETarget(family, "tokens", config)], source, cfg).run().saes[family].eval()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        codes = torch.cat([sae.encode(c) for c in test.split(4096)])
        x_hat = torch.cat([sae.decode(c) for c in codes.split(4096)])
    return {**score(test, x_hat, codes), "seconds": seconds}


# ----------------------------------------------------------------------------- anchor
ANCHOR = {
    "topk": "TopKSAE",
    "batchtopk": "BatchTopKSAE",
    "jumprelu": "JumpSAE (mse_l1)",
    "relu": "SAE (mse_l1)",
    "mp": "MpSAE",
    "asae": "RATopKSAE δ=0",
    "rasae": "RATopKSAE δ=1",
}


def train_anchor(family: str, train: torch.Tensor, test: torch.Tensor, steps: int) -> dict:
    """One overcomplete SAE, run inside the anchor's interpreter."""
    from overcomplete.sae import (
        SAE,
        BatchTopKSAE,
        JumpSAE,
        MpSAE,
        RATopKSAE,
        TopKSAE,
        mse_l1,
        train_sae,
    )

    from probe_sae.saes import kmeans

    torch.manual_seed(SEED)
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    train_n, test_n = (train - mean) / std, (test - mean) / std
    d = train.shape[1]
    n = EXPANSION * d
    if family in ("asae", "rasae"):
        points = kmeans(train_n[:16384], n_candidates(n, min(16384, train_n.shape[0])), seed=SEED)
        delta = 0.0 if family == "asae" else 1.0
        model = RATopKSAE(d, n, points=points, top_k=K, delta=delta)
    else:
        model = {
            "topk": lambda: TopKSAE(d, n, top_k=K),
            "batchtopk": lambda: BatchTopKSAE(d, n, top_k=K),
            "jumprelu": lambda: JumpSAE(d, n),
            "relu": lambda: SAE(d, n),
            "mp": lambda: MpSAE(d, n, k=K),
        }[family]()

    def mse(x, x_hat, pre_codes, codes, dictionary):
        return (x - x_hat).square().mean()

    criterion = mse_l1 if family in ("jumprelu", "relu") else mse
    b = batch_size(train.shape[0])
    g = torch.Generator().manual_seed(SEED)
    batches, order = [], torch.empty(0, dtype=torch.long)
    while len(batches) < steps:  # epochs of shuffled batches, as many as ours takes
        if order.numel() < b:
            order = torch.cat([order, torch.randperm(train_n.shape[0], generator=g)])
        batches.append(train_n[order[:b]])
        order = order[b:]
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    start = time.perf_counter()
    train_sae(model, batches, criterion, optimizer, nb_epochs=1, monitoring=0)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        outs = [model(c) for c in test_n.split(4096)]
    codes = torch.cat([o[1] for o in outs])
    x_hat = torch.cat([o[2] for o in outs]) * std + mean
    return {**score(test, x_hat, codes), "seconds": seconds}


def anchor_worker(tokens_file: str, dataset: str, steps: list[int], out: str) -> None:
    """Entry point in the anchor's interpreter: every family × step count, one JSON file."""
    tensors = load_file(tokens_file)
    train, test = tensors[f"{dataset}.train"], tensors[f"{dataset}.test"]
    results = {}
    for family in FAMILIES:
        for s in steps:
            try:
                results[f"{family}:{s}"] = train_anchor(family, train, test, s)
            except Exception as err:  # one family failing must not hide the others
                results[f"{family}:{s}"] = {"error": f"{type(err).__name__}: {err}"[:120]}
    Path(out).write_text(json.dumps(results))


def run_anchor(python: str, tokens_file: str, dataset: str, steps: list[int]) -> dict | str:
    """The anchor's results, or why there are none."""
    if not Path(python).exists():
        return f"no {python}: install it as the module docstring says"
    check = subprocess.run([python, "-c", "import overcomplete"], capture_output=True, text=True)
    if check.returncode:
        return f"{python} cannot import overcomplete: {check.stderr.strip().splitlines()[-1]}"
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [
            python,
            __file__,
            "--anchor-worker",
            tokens_file,
            "--datasets",
            dataset,
            "--steps",
            ",".join(map(str, steps)),
            "--out",
            out.name,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            return f"anchor process failed: {proc.stderr.strip().splitlines()[-1]}"
        return json.loads(Path(out.name).read_text())


# ----------------------------------------------------------------------------- table
def cell(r: dict | None) -> str:
    if r is None:
        return "—"
    if "error" in r:
        return r["error"]
    return f"{r['fvu']:.3f} / {r['l0']:.1f} / {r['dead']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 steps only")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--steps", default=None, help="comma-separated step counts")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--anchor-python", default=ANCHOR_PYTHON)
    parser.add_argument("--anchor-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = (
        [int(s) for s in args.steps.split(",")]
        if args.steps
        else list(QUICK_STEPS if args.quick else STEPS)
    )
    datasets = args.datasets.split(",")
    if args.anchor_worker:
        anchor_worker(args.anchor_worker, datasets[0], steps, args.out)
        return
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    families = args.families.split(",")
    makers = {"organism": organism_tokens, "digits": digits_tokens, "clip": clip_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        tokens_file = str(Path(tmp) / "tokens.safetensors")
        tensors = {}
        for name in datasets:
            train, test = split(*makers[name]())
            tensors[f"{name}.train"], tensors[f"{name}.test"] = train, test
        save_file(tensors, tokens_file)
        print("FVU (held-out, raw space) / L0 / dead fraction; k = 16, 8 × width concepts")
        for name in datasets:
            train, test = tensors[f"{name}.train"], tensors[f"{name}.test"]
            anchor = run_anchor(args.anchor_python, tokens_file, name, steps)
            print(
                f"\n{name}: {train.shape[0]:,} train / {test.shape[0]:,} held-out tokens, "
                f"d = {train.shape[1]}, batch {batch_size(train.shape[0])}"
            )
            if isinstance(anchor, str):
                print(f"anchor: {anchor}")
            print("| family | steps | probe_sae | overcomplete 0.3.0 | anchor model |")
            print("| --- | --- | --- | --- | --- |")
            for family in families:
                for s in steps:
                    ours = train_ours(family, train, test, s)
                    theirs = anchor.get(f"{family}:{s}") if isinstance(anchor, dict) else None
                    print(
                        f"| {family} | {s:,} | {cell(ours)} | {cell(theirs)} | {ANCHOR[family]} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
