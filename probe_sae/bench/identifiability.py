"""Soft identifiability (Fel et al. 2025, "Archetypal SAE", §4 and Table 3).

Images are collages of a few known objects. Dictionaries with as many atoms as object kinds
are trained on pooled image activations; for each object, the best (atom, percentile
threshold) detector's accuracy is its score, averaged over objects. The all-absent baseline
(predict "absent" everywhere) is reported beside it because it is high, and so is a k-means
baseline (centroids as atoms, codes = ReLU of the projection on the unit centroids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from probe_sae.bench.common import PUBLISHED, bench_sae, markdown_table, train_on_tokens
from probe_sae.metrics.dictionary import soft_identifiability
from probe_sae.saes import kmeans


@dataclass
class IdentifiabilityResult:
    scores: dict[str, float]
    per_object: dict[str, list[float]]
    all_absent: float
    n_objects: int
    data: str

    def to_markdown(self) -> str:
        rows = [[name, score] for name, score in self.scores.items()]
        rows.append(["all-absent baseline", self.all_absent])
        table = markdown_table(["method", "soft identifiability (test)"], rows)
        return "\n\n".join(
            [
                f"Soft identifiability on {self.data}; {self.n_objects} object kinds, dictionary size = {self.n_objects}.",
                table,
                f"Published: {PUBLISHED['identifiability']}",
            ]
        )


def identifiability_study(
    train_acts: Tensor,
    test_acts: Tensor,
    test_presence: Tensor,
    *,
    families: Sequence[str] = ("topk", "relu", "asae", "rasae"),
    k: int = 4,
    n_candidates: int = 256,
    delta: float = 1.0,
    steps: int = 1500,
    lr: float = 3e-3,
    seed: int = 0,
    data: str = "pooled image activations",
) -> IdentifiabilityResult:
    """Train each family on ``train_acts`` (N, d) and score detectors on the test images."""
    c = test_presence.shape[1]
    mean, std = train_acts.mean(0), train_acts.std(0).clamp_min(1e-6)
    tr, te = (train_acts - mean) / std, (test_acts - mean) / std
    cands = kmeans(tr, min(n_candidates, tr.shape[0]), seed=seed)
    specs = {
        fam: bench_sae(
            fam,
            tr.shape[1],
            c,
            k=k,
            candidates=cands,
            delta=delta,
            seed=seed,
            **({"l1_coeff": 1e-2} if fam == "relu" else {}),
        )
        for fam in families
    }
    saes = train_on_tokens(
        specs,
        tr,
        steps=steps,
        batch_size=min(256, tr.shape[0]),
        lr=lr,
        seed=seed,
        normalization="none",
        warmup_steps=50,
    )
    scores, per_object = {}, {}
    with torch.no_grad():
        for name, sae in saes.items():
            res = soft_identifiability(sae.eval().encode(te), test_presence)
            scores[name], per_object[name] = res["score"], res["per_concept"]
        centroids = kmeans(tr, c, seed=seed)
        unit = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(1e-12)
        res = soft_identifiability(torch.relu(te @ unit.T), test_presence)
        scores["k-means"], per_object["k-means"] = res["score"], res["per_concept"]
    all_absent = float((1 - test_presence.double().mean(0)).mean())
    return IdentifiabilityResult(scores, per_object, all_absent, c, data)
