"""Plausibility against dictionary size (Fel et al. 2025, "Archetypal SAE", §4 and Table 2).

Plausibility = mean over classes of the best cosine between a class direction (a row of the
model's classification head) and an atom. SAEs of growing size are trained on the activations
the head reads; a plausible dictionary recovers the "true" class directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from probe_sae.bench.common import PUBLISHED, bench_sae, markdown_table, train_on_tokens
from probe_sae.metrics.dictionary import plausibility
from probe_sae.saes import kmeans


@dataclass
class PlausibilityResult:
    sizes: list[int]
    scores: dict[str, list[float]]
    data: str

    def to_markdown(self) -> str:
        rows = [[name, *vals] for name, vals in self.scores.items()]
        table = markdown_table(["SAE", *[f"{n} atoms" for n in self.sizes]], rows)
        return "\n\n".join(
            [
                f"Plausibility against dictionary size on {self.data}.",
                table,
                f"Published: {PUBLISHED['plausibility']}",
            ]
        )


def plausibility_study(
    tokens: Tensor,
    class_directions: Tensor,
    *,
    sizes: Sequence[int] = (16, 32, 64, 128, 256),
    families: Sequence[str] = ("topk", "asae", "rasae"),
    k: int = 8,
    delta: float = 1.0,
    steps: int = 800,
    lr: float = 2e-3,
    seed: int = 0,
    data: str = "tokens",
) -> PlausibilityResult:
    """Train each family at each size; atoms are compared with the class directions.

    Tokens are centred but not rescaled, so atoms stay in the head's own coordinates (the
    head's rows are directions of the raw space it reads).
    """
    x = tokens.float()
    x = x - x.mean(0)
    scores: dict[str, list[float]] = {f: [] for f in families}
    cands = kmeans(x, min(4 * max(sizes), x.shape[0]), seed=seed)
    for n in sizes:
        specs = {
            fam: bench_sae(fam, x.shape[1], n, k=k, candidates=cands, delta=delta, seed=seed)
            for fam in families
        }
        saes = train_on_tokens(
            specs,
            x,
            steps=steps,
            batch_size=min(512, x.shape[0]),
            lr=lr,
            seed=seed,
            normalization="none",
        )
        for fam, sae in saes.items():
            with torch.no_grad():
                scores[fam].append(plausibility(sae.dictionary, class_directions))
    return PlausibilityResult(list(sizes), scores, data)
