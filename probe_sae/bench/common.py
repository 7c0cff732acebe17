"""Shared pieces of the paper benchmarks: training helpers, tables, published figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from probe_sae.saes import SAE, SAEConfig, build_sae, kmeans
from probe_sae.saes.factory import ARCHETYPAL
from probe_sae.stream.tokens import TensorTokenSource
from probe_sae.train import SAETarget, TrainConfig, Trainer

#: Figures published in the seed papers, printed beside ours.
PUBLISHED = {
    "stability": "A-SAE paper, Table 1 (DINOv2, 2,000 concepts, 4 seeds): stability TopK 0.542, "
    "JumpReLU 0.539, Vanilla (ReLU) 0.710, RA-SAE 0.927; R² TopK 89.5 %, RA-SAE 89.3 %. A later "
    "critique (arXiv 2606.02061) attributes the gain to initialising every seed at the same "
    "k-means centroids.",
    "identifiability": "A-SAE paper, Table 3 (12 collage data sets, 4 objects per image): soft "
    "identifiability k-means ≈ 0.77, TopK ≈ 0.81–0.83, SemiNMF ≈ 0.83–0.84, A-SAE ≈ 0.95–0.96, "
    "RA-SAE ≈ 0.95–0.96; all-absent baseline 1 − 4/c (0.56–0.80).",
    "plausibility": "A-SAE paper, Table 2 (ViT, 512 → 32k atoms): TopK 0.13 → 0.29, A-SAE "
    "0.21 → 0.37, RA-SAE (δ = 1) 0.15 → 0.50.",
    "hierarchy": "Matryoshka SAEs (Bussmann et al. 2025, Gemma-2-2B, SAEBench's first-letter "
    "absorption): far less feature absorption than BatchTopK at the same L0, and early latents "
    "that are general (parent) features, at a small cost in reconstruction. MP-SAE (Costa, Fel "
    "et al. 2025): residual-guided selection captures hierarchical, correlated features better "
    "than TopK (a parent atom, then the child's refinement); no absorption rate published.",
    "mp-k": "MP-SAE paper (MNIST, 1,000 atoms, k = 10): MP's error keeps falling as inference-time "
    "k grows, TopK degrades past its training k, ReLU plateaus; shallow SAEs learn near-orthogonal "
    "atoms, MP-SAE correlated ones (higher coherence / Babel).",
}


#: families that take a sparsity k
K_FAMILIES = (
    "topk",
    "batchtopk",
    "mp",
    "asae",
    "rasae",
    "matryoshka",
    "matryoshka_asae",
    "matryoshka_rasae",
)


def bench_sae(
    family: str,
    d_model: int,
    n_concepts: int,
    *,
    k: int,
    candidates: Tensor | None = None,
    delta: float = 1.0,
    seed: int = 0,
    **hyperparameters: Any,
) -> SAE:
    """An SAE of ``family`` for a benchmark: ``k`` where the family has one, archetypal
    families on ``candidates`` (δ = 0 for A-SAEs, ``delta`` for the relaxed ones)."""
    hyper = {"k": min(k, n_concepts)} if family in K_FAMILIES else {}
    hyper.update(hyperparameters)
    if family in ARCHETYPAL:
        if candidates is None:
            raise ValueError(f"{family} needs candidates")
        if ARCHETYPAL[family] > 0:
            hyper["delta"] = delta
        return build_sae(family, d_model, n_concepts, candidates=candidates, **hyper)
    return build_sae(family, d_model, n_concepts, seed=seed, **hyper)


def train_on_tokens(
    specs: dict[str, SAEConfig | SAE],
    tokens: Tensor,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    normalization: str = "standardize",
    progress: bool = True,
    **config: Any,
) -> dict[str, SAE]:
    """Train several SAEs on the same in-memory tokens (same batch order); returns them by name.

    ``progress`` shows the training bar (a benchmark that draws its own passes ``False``)."""
    source = TensorTokenSource(
        tokens, batch_size=min(batch_size, tokens.shape[0]), epochs=None, seed=seed
    )
    targets = [SAETarget(name, "tokens", spec) for name, spec in specs.items()]
    cfg = TrainConfig(
        max_steps=steps,
        lr=lr,
        normalization=normalization,
        progress=progress,
        init_tokens=min(tokens.shape[0], config.pop("init_tokens", 16384)),
        **config,
    )
    return Trainer(targets, source, cfg).run().saes


def train_families(
    families: Sequence[str],
    tokens: Tensor,
    n_concepts: int,
    *,
    k: int,
    delta: float,
    n_candidates: int,
    penalties: dict[str, dict[str, Any]],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, SAE]:
    """Every family of ``families`` built by :func:`bench_sae` (archetypal ones on k-means
    candidates of ``tokens``; ``penalties`` for the families without k) and trained together on
    ``tokens`` (N, d), already standardised: no normalisation inside the SAEs, 50 warm-up steps."""
    candidates = kmeans(tokens, min(n_candidates, tokens.shape[0]), seed=seed)
    specs: dict[str, SAEConfig | SAE] = {
        family: bench_sae(
            family,
            tokens.shape[1],
            n_concepts,
            k=k,
            candidates=candidates,
            delta=delta,
            seed=seed,
            **penalties.get(family, {}),
        )
        for family in families
    }
    return train_on_tokens(
        specs,
        tokens,
        steps=steps,
        batch_size=min(batch_size, tokens.shape[0]),
        lr=lr,
        seed=seed,
        normalization="none",
        warmup_steps=50,
        progress=progress,
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
