"""Batched k-means in torch, to pick archetypal candidates (Fel et al., 2025, §3).

The A-SAE paper takes the candidate points ``C`` as k-means centroids of the activations
(it found k-means better than LOF, isolation forest, convex hull on PCA or one-class SVM).
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm


def _nearest(x_ND: Tensor, centroids_KD: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """(N,) index of each point's nearest centroid and (N,) its squared distance."""
    c_sq = (centroids_KD * centroids_KD).sum(dim=1)
    idx = torch.empty(x_ND.shape[0], dtype=torch.long, device=x_ND.device)
    dist = torch.empty(x_ND.shape[0], dtype=x_ND.dtype, device=x_ND.device)
    for start in range(0, x_ND.shape[0], chunk):
        xs = x_ND[start : start + chunk]
        d2 = (xs * xs).sum(dim=1, keepdim=True) - 2 * xs @ centroids_KD.T + c_sq
        best, arg = d2.min(dim=1)
        idx[start : start + chunk], dist[start : start + chunk] = arg, best.clamp_min(0)
    return idx, dist


def _kmeans_pp_init(x_ND: Tensor, n_clusters: int, gen: torch.Generator, chunk: int) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007)."""
    n = x_ND.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x_ND[first]]
    _, dist = _nearest(x_ND, x_ND[first : first + 1], chunk)
    for _ in range(1, n_clusters):
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / n)
        nxt = int(torch.multinomial(probs.cpu().double(), 1, generator=gen))
        centroids.append(x_ND[nxt])
        _, d_new = _nearest(x_ND, x_ND[nxt : nxt + 1], chunk)
        dist = torch.minimum(dist, d_new)
    return torch.stack(centroids)


def kmeans(
    x_ND: Tensor,
    n_clusters: int,
    n_iter: int = 25,
    seed: int = 0,
    init: str = "auto",
    chunk: int = 8192,
    tol: float = 1e-6,
    progress: bool = False,
) -> Tensor:
    """Lloyd's k-means; returns the (n_clusters, d) centroids.

    Args:
        x_ND: points, any float dtype and device (computed in float32 or higher).
        init: ``"k-means++"``, ``"random"`` (distinct random points), or ``"auto"``
            (k-means++ up to 256 clusters, random above: k-means++ is sequential in k).
        chunk: points per distance block, bounding memory to ``chunk × n_clusters``.
        tol: stop when the relative decrease of the inertia falls below it.

    Empty clusters are re-seeded with the points farthest from their centroid.
    """
    if x_ND.ndim != 2:
        raise ValueError(f"kmeans takes an (N, d) matrix, got shape {tuple(x_ND.shape)}")
    n = x_ND.shape[0]
    if n < n_clusters:
        raise ValueError(f"kmeans needs at least n_clusters={n_clusters} points, got {n}")
    x = x_ND if x_ND.dtype in (torch.float32, torch.float64) else x_ND.float()
    gen = torch.Generator().manual_seed(seed)
    if init == "auto":
        init = "k-means++" if n_clusters <= 256 else "random"
    if init == "k-means++":
        centroids = _kmeans_pp_init(x, n_clusters, gen, chunk)
    elif init == "random":
        centroids = x[torch.randperm(n, generator=gen)[:n_clusters].to(x.device)].clone()
    else:
        raise ValueError(f"unknown init {init!r}: use 'auto', 'k-means++' or 'random'")

    previous = float("inf")
    for _ in tqdm(range(n_iter), desc="k-means", disable=not progress):
        assign, dist = _nearest(x, centroids, chunk)
        counts = torch.bincount(assign, minlength=n_clusters)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None].to(x.dtype)
        n_empty = int((~nonempty).sum())
        if n_empty:
            far = dist.topk(n_empty).indices
            centroids[~nonempty] = x[far]
        inertia = float(dist.sum())
        if n_empty == 0 and previous - inertia <= tol * max(previous, 1e-30):
            break
        previous = inertia
    return centroids
