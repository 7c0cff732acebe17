"""Stability across seeds (Fel et al. 2025, "Archetypal SAE", §4 and Table 1).

The same family is trained with ``n_seeds`` seeds (initialisation and batch order) on the same
tokens; the score is the mean over seed pairs of the signed-Hungarian matched cosine between
their dictionaries. A later critique (arXiv 2606.02061) attributes A-SAE's stability to its
initialisation shared across runs, so archetypal SAEs are run in four settings: candidates C
shared by all seeds (as in the paper) or recomputed per seed by k-means with the seed's own
seed, each with the paper's deterministic initialisation (atom i at candidate i, Λ = 0: the
same start for every seed given C) and with a random one drawn from the seed (each atom at a
random candidate, Λ random: ``ArchetypalConfig(init="random")``). Free dictionaries always
start at random per seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae.bench.common import K_FAMILIES, PUBLISHED, markdown_table, train_on_tokens
from probe_sae.metrics.dictionary import mean_pairwise_stability
from probe_sae.metrics.reconstruction import fvu
from probe_sae.saes import SAE, SAEConfig, build_sae, family_config, kmeans
from probe_sae.saes.factory import ARCHETYPAL


@dataclass
class StabilityRow:
    """One family (and archetypal candidate setting): its stability and test FVU over seeds.

    ``stability`` / ``fvu`` / ``dictionaries`` are the runs with the family's default
    initialisation (archetypal: the paper's deterministic one); ``random_init_*`` the same runs
    with archetypal weights initialised at random per seed (``None`` / empty for free
    dictionaries, or when the study was asked for one initialisation only).
    """

    family: str
    setting: str
    stability: float
    fvu: float
    dictionaries: list[Tensor] = field(default_factory=list, repr=False)
    random_init_stability: float | None = None
    random_init_fvu: float | None = None
    random_init_dictionaries: list[Tensor] = field(default_factory=list, repr=False)


@dataclass
class StabilityResult:
    """The rows of :func:`stability_study`; ``to_markdown()`` renders them as a table."""

    rows: list[StabilityRow]
    n_seeds: int
    n_concepts: int
    data: str

    def to_markdown(self) -> str:
        header = ["family", "candidates C", f"stability ({self.n_seeds} seeds)", "mean test FVU"]
        with_random = any(r.random_init_stability is not None for r in self.rows)
        if with_random:
            header += ["stability, random init", "test FVU, random init"]
        rows = []
        for r in self.rows:
            row: list[object] = [r.family, r.setting, r.stability, r.fvu]
            if with_random:
                row += [
                    "—" if v is None else v for v in (r.random_init_stability, r.random_init_fvu)
                ]
            rows.append(row)
        parts = [
            f"Stability across seeds on {self.data}; {self.n_concepts} concepts.",
            markdown_table(header, rows),
        ]
        if with_random:
            parts.append(
                "Archetypal SAEs start with atom i at candidate i and Λ = 0 (the paper's "
                "initialisation, the same for every seed given C), or, under *random init*, "
                "each atom at a candidate drawn at random and Λ at random, per seed "
                '(`ArchetypalConfig(init="random")`); free dictionaries always start at '
                "random per seed."
            )
        parts.append(f"Published: {PUBLISHED['stability']}")
        return "\n\n".join(parts)


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
    random_init: bool = True,
    data: str = "tokens",
    progress: bool = True,
) -> StabilityResult:
    """Train every family with ``n_seeds`` seeds on the same (standardised) tokens.

    Returns per family (and archetypal candidate setting) the mean pairwise stability and mean
    test FVU; with ``random_init``, archetypal families are also trained with their weights
    initialised at random per seed (``ArchetypalConfig(init="random")``), in the same settings.
    """
    x = tokens.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std  # one normalisation for every seed, so dictionaries share a space
    n_test = max(int(test_fraction * x.shape[0]), 1)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1234))
    train, test = x[perm[n_test:]], x[perm[:n_test]]
    d = x.shape[1]
    n_cand = n_candidates or min(4 * n_concepts, train.shape[0])
    candidates: dict[int, Tensor] = {}  # k-means seed -> candidates, shared by the runs

    def candidates_of(seed: int) -> Tensor:
        if seed not in candidates:
            candidates[seed] = kmeans(train, n_cand, seed=seed)
        return candidates[seed]

    runs = [(f, "shared") for f in families if f in ARCHETYPAL] + [
        (f, "per seed") for f in families
    ]
    runs = [(f, s) for f, s in runs if not (f not in ARCHETYPAL and s == "shared")]
    runs.sort(key=lambda fs: list(families).index(fs[0]))
    n_inits = {f: 2 if random_init and f in ARCHETYPAL else 1 for f in families}
    total = sum(n_inits[f] for f, _ in runs) * n_seeds
    bar = tqdm(total=total, desc="stability", disable=not progress)

    def train_seeds(family: str, setting: str, init: str) -> tuple[list[Tensor], float]:
        dicts, fvus = [], []
        for seed in range(n_seeds):
            if family in ARCHETYPAL:
                cands = candidates_of(0 if setting == "shared" else seed)
                spec: SAE | SAEConfig = _archetypal_sae(
                    family, d, n_concepts, k, cands, delta, seed, init
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
        return dicts, float(sum(fvus) / len(fvus))

    rows: list[StabilityRow] = []
    for family, setting in runs:
        dicts, mean_fvu = train_seeds(family, setting, "deterministic")
        label = setting if family in ARCHETYPAL else "—"
        row = StabilityRow(family, label, mean_pairwise_stability(dicts), mean_fvu, dicts)
        if n_inits[family] == 2:
            dicts, mean_fvu = train_seeds(family, setting, "random")
            row.random_init_stability = mean_pairwise_stability(dicts)
            row.random_init_fvu, row.random_init_dictionaries = mean_fvu, dicts
        rows.append(row)
    bar.close()
    return StabilityResult(rows, n_seeds, n_concepts, data)


def _archetypal_sae(
    family: str,
    d_model: int,
    n_concepts: int,
    k: int,
    candidates: Tensor,
    delta: float,
    seed: int,
    init: str,
) -> SAE:
    """An archetypal SAE of ``family`` on ``candidates``, its weights initialised by ``init``
    from ``seed`` (δ = ``delta`` for the relaxed families)."""
    fields: dict[str, object] = {"k": min(k, n_concepts), "seed": seed, "init": init}
    if ARCHETYPAL[family] > 0:
        fields["delta"] = delta
    return build_sae(family, d_model, n_concepts, candidates=candidates, **fields)
