"""``evaluate(sae, data)``: the field's numbers for one SAE on an evaluation set.

Reported exactly as defined in the design notes: FVU / R² with float64 accumulators and the
per-dimension mean of the whole set, on raw activations; L0 as the mean number of non-zero
codes per token (and its standard deviation over tokens, non-zero for the families whose L0
varies per token: BatchTopK, JumpReLU, ReLU, MP-SAE stopping early), split into CLS /
register / patch tokens when token positions are known;
firing frequencies over the set, dead (frequency 0) and dense (frequency > 1e-2) fractions;
and the dictionary's geometry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae.metrics.dictionary import coherence, effective_rank, stable_rank
from probe_sae.metrics.reconstruction import ReconstructionStats

if TYPE_CHECKING:  # types only: metrics stay importable without the model and stream stack
    from probe_sae.models.layout import TokenLayout
    from probe_sae.saes import SAE
    from probe_sae.stream.tokens import TokenSource


@dataclass
class EvalReport:
    """Evaluation figures of one SAE; ``to_json()`` / ``to_markdown()`` render it."""

    family: str
    d_model: int
    n_concepts: int
    n_tokens: int
    fvu: float
    r2: float
    l0: float
    l0_std: float = 0.0
    l0_by_token_kind: dict[str, float] = field(default_factory=dict)
    dead_fraction: float = 0.0
    dense_fraction: float = 0.0
    dense_threshold: float = 1e-2
    nonfinite_tokens: int = 0
    geometry: dict[str, float] = field(default_factory=dict)
    firing_frequency: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, with_frequencies: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_frequencies:
            out.pop("firing_frequency")
        return out

    def to_json(self, path: str | Path | None = None, with_frequencies: bool = False) -> str:
        text = json.dumps(self.to_dict(with_frequencies), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_markdown(self) -> str:
        rows = [
            ("family", self.family),
            ("concepts × width", f"{self.n_concepts} × {self.d_model}"),
            ("tokens evaluated", f"{self.n_tokens:,}"),
            ("FVU", f"{self.fvu:.4f}"),
            ("R²", f"{self.r2:.4f}"),
            ("L0 (all tokens)", f"{self.l0:.2f}"),
            ("L0 std over tokens", f"{self.l0_std:.2f}"),
            *[(f"L0 ({kind} tokens)", f"{v:.2f}") for kind, v in self.l0_by_token_kind.items()],
            ("dead latents (never fired)", f"{100 * self.dead_fraction:.2f} %"),
            (
                f"dense latents (freq > {self.dense_threshold:g})",
                f"{100 * self.dense_fraction:.2f} %",
            ),
            *[(name.replace("_", " "), f"{v:.4f}") for name, v in self.geometry.items()],
        ]
        if self.nonfinite_tokens:
            rows.append(("non-finite tokens skipped", f"{self.nonfinite_tokens:,}"))
        return "\n".join(
            ["| metric | value |", "| --- | ---: |", *[f"| {a} | {b} |" for a, b in rows]]
        )


def _token_kinds(layout: TokenLayout, token_index: Tensor) -> dict[str, Tensor]:
    """Masks of CLS / register / patch tokens from positions in the token axis."""
    kinds: dict[str, Tensor] = {}
    cls = getattr(layout, "cls_index", None)
    regs = tuple(getattr(layout, "register_indices", ()) or ())
    n_prefix = int(getattr(layout, "n_prefix", 0) or 0)
    if cls is not None:
        kinds["cls"] = token_index == cls
    if regs:
        kinds["register"] = torch.isin(token_index, torch.tensor(regs, device=token_index.device))
    kinds["patch"] = token_index >= n_prefix
    return kinds


def _batches(
    data: Tensor | TokenSource, layer: str | None, batch_size: int
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (tokens, token_index or None) from a tensor or a token source."""
    if isinstance(data, Tensor):
        for start in range(0, data.shape[0], batch_size):
            yield data[start : start + batch_size], None
        return
    if not hasattr(data, "next_batch"):
        raise TypeError(
            "evaluate() takes an (N, d) tensor or a token source (ActivationStream, CachedTokens, ...)"
        )
    keys = [k for k in data.widths()]
    key = layer if layer is not None else (keys[0] if len(keys) == 1 else None)
    if key is None or key not in keys:
        raise ValueError(f"pick the layer to evaluate with layer=, one of {keys}")
    while (batch := data.next_batch()) is not None:
        yield batch[key], batch.get("token_index")


def _geometry(atoms: Tensor) -> dict[str, float]:
    """The dictionary's coherence, stable rank and effective rank (A-SAE paper, App. C)."""
    return {
        "coherence": coherence(atoms),
        "stable_rank": stable_rank(atoms),
        "effective_rank": effective_rank(atoms),
    }


@torch.no_grad()
def evaluate(
    sae: SAE,
    data: Tensor | TokenSource,
    *,
    layer: str | None = None,
    layout: TokenLayout | None = None,
    batch_size: int = 4096,
    max_tokens: int | None = None,
    dense_threshold: float = 1e-2,
    progress: bool = False,
    geometry: bool = True,
) -> EvalReport:
    """Evaluate ``sae`` on ``data``: an (N, d) tensor of raw activations, or a token source.

    Args:
        layer: the source's layer to read (needed when it streams several).
        layout: a ``TokenLayout`` (``model.layout``); with a stream built with
            ``provenance=True`` it splits L0 into CLS / register / patch tokens.
        max_tokens: stop after this many tokens.
        geometry: add the dictionary's coherence and ranks (its n_concepts² Gram matrix);
            ``False`` leaves ``geometry`` empty (the end-of-training summary does).
    """
    was_training = sae.training
    sae.eval()
    device, dtype = sae.b_pre.device, sae.b_pre.dtype
    stats = ReconstructionStats()
    fire = torch.zeros(sae.n_concepts, dtype=torch.float64)
    l0_sum = l0_sq_sum = 0.0
    kind_sums: dict[str, list[float]] = {}
    nonfinite = seen = 0
    bar = tqdm(desc="evaluating", unit="tok", total=max_tokens, disable=not progress)
    try:
        for x, token_index in _batches(data, layer, batch_size):
            finite = torch.isfinite(x).all(dim=1)
            nonfinite += int((~finite).sum())
            x = x[finite]
            token_index = (
                token_index[finite.to(token_index.device)] if token_index is not None else None
            )
            if max_tokens is not None:
                x = x[: max_tokens - seen]
                token_index = token_index[: x.shape[0]] if token_index is not None else None
            if x.shape[0] == 0:
                break
            x = x.to(device=device, dtype=dtype)
            out = sae(x)
            active = out.codes != 0
            per_token = active.sum(dim=1).double().cpu()
            stats.update(x, out.x_hat)
            fire += active.sum(dim=0).double().cpu()
            l0_sum += float(per_token.sum())
            l0_sq_sum += float(per_token.square().sum())
            if layout is not None and token_index is not None:
                for kind, mask in _token_kinds(layout, token_index.cpu()).items():
                    acc = kind_sums.setdefault(kind, [0.0, 0.0])
                    acc[0] += float(per_token[mask].sum())
                    acc[1] += float(mask.sum())
            seen += x.shape[0]
            bar.update(x.shape[0])
            if max_tokens is not None and seen >= max_tokens:
                break
    finally:
        bar.close()
        sae.train(was_training)
    if seen == 0:
        raise ValueError("no finite tokens to evaluate")
    freq = fire / seen
    l0 = l0_sum / seen
    atoms = sae.dictionary.detach()
    return EvalReport(
        family=getattr(sae, "label", sae.family),
        d_model=sae.d_model,
        n_concepts=sae.n_concepts,
        n_tokens=seen,
        fvu=stats.fvu,
        r2=stats.r2,
        l0=l0,
        l0_std=math.sqrt(max(l0_sq_sum / seen - l0 * l0, 0.0)),
        l0_by_token_kind={k: s / n for k, (s, n) in kind_sums.items() if n > 0},
        dead_fraction=float((freq == 0).double().mean()),
        dense_fraction=float((freq > dense_threshold).double().mean()),
        dense_threshold=dense_threshold,
        nonfinite_tokens=nonfinite,
        geometry=_geometry(atoms) if geometry else {},
        firing_frequency=freq.tolist(),
    )
