"""Stability across seeds (Fel et al. 2025, "Archetypal SAE", §4 and Table 1).

The same family is trained with ``n_seeds`` seeds (initialisation and batch order) on the same
tokens; the score is the mean over seed pairs of the signed-Hungarian matched cosine between
their dictionaries. Archetypal SAEs are run twice: with candidates C shared by all seeds (as
in the paper) and with C recomputed per seed by k-means with the seed's own seed, since a
later critique (arXiv 2606.02061) attributes A-SAE's stability to the shared initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae.bench.common import K_FAMILIES, PUBLISHED, bench_sae, markdown_table, train_on_tokens
from probe_sae.metrics.dictionary import mean_pairwise_stability
from probe_sae.metrics.reconstruction import fvu
from probe_sae.saes import SAE, SAEConfig, family_config, kmeans
from probe_sae.saes.factory import ARCHETYPAL


@dataclass
class StabilityRow:
    family: str
    setting: str
    stability: float
    fvu: float
    dictionaries: list[Tensor] = field(default_factory=list, repr=False)


@dataclass
class StabilityResult:
    rows: list[StabilityRow]
    n_seeds: int
    n_concepts: int
    data: str

    def to_markdown(self) -> str:
        table = markdown_table(
            ["family", "candidates C", f"stability ({self.n_seeds} seeds)", "mean test FVU"],
            [[r.family, r.setting, r.stability, r.fvu] for r in self.rows],
        )
        return "\n\n".join(
            [
                f"Stability across seeds on {self.data}; {self.n_concepts} concepts.",
                table,
                f"Published: {PUBLISHED['stability']}",
            ]
        )


def stability_study(
    tokens: Tensor,
    *,
    families: Sequence[str] = ("topk", "batchtopk", "jumprelu", "mp", "asae", "rasae"),
    n_seeds: int = 4,
    n_concepts: int = 256,
    k: int = 16,
    n_candidates: int | None = None,
    delta: float = 1.0,
    steps: int = 600,
    batch_size: int = 1024,
    lr: float = 1e-3,
    test_fraction: float = 0.1,
    data: str = "tokens",
    progress: bool = True,
) -> StabilityResult:
    """Train every family with ``n_seeds`` seeds on the same (standardised) tokens.

    Returns per family (and archetypal setting) the mean pairwise stability and mean test FVU.
    """
    x = tokens.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std  # one normalisation for every seed, so dictionaries share a space
    n_test = max(int(test_fraction * x.shape[0]), 1)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1234))
    train, test = x[perm[n_test:]], x[perm[:n_test]]
    d = x.shape[1]
    n_cand = n_candidates or min(4 * n_concepts, train.shape[0])
    shared = None
    rows: list[StabilityRow] = []
    runs = [(f, "shared") for f in families if f in ARCHETYPAL] + [
        (f, "per seed") for f in families
    ]
    runs = [(f, s) for f, s in runs if not (f not in ARCHETYPAL and s == "shared")]
    runs.sort(key=lambda fs: list(families).index(fs[0]))
    bar = tqdm(total=len(runs) * n_seeds, desc="stability", disable=not progress)
    for family, setting in runs:
        dicts, fvus = [], []
        for seed in range(n_seeds):
            if family in ARCHETYPAL:
                if setting == "shared":
                    shared = shared if shared is not None else kmeans(train, n_cand, seed=0)
                    cands = shared
                else:
                    cands = kmeans(train, n_cand, seed=seed)
                spec: SAE | SAEConfig = bench_sae(
                    family, d, n_concepts, k=k, candidates=cands, delta=delta
                )
            else:
                options = {"k": k} if family in K_FAMILIES else {}
                spec = family_config(family, n_concepts=n_concepts, seed=seed, **options)
            sae = train_on_tokens(
                {"s": spec},
                train,
                steps=steps,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                normalization="none",
                progress=False,  # the study's own bar counts the runs
            )["s"]
            dicts.append(sae.dictionary.detach().clone())
            with torch.no_grad():
                fvus.append(fvu(test, sae.eval()(test).x_hat))
            bar.update(1)
        label = ("shared" if setting == "shared" else "per seed") if family in ARCHETYPAL else "—"
        rows.append(
            StabilityRow(
                family, label, mean_pairwise_stability(dicts), float(sum(fvus) / len(fvus)), dicts
            )
        )
    bar.close()
    return StabilityResult(rows, n_seeds, n_concepts, data)
