"""Spliced fidelity: how much of the model survives when an SAE's reconstruction replaces a layer.

With the SAE's reconstruction substituted at the layer (no error term), compare the model's
outputs with the clean forward: the cosine of the final embeddings, the KL divergence of the
class logits (clean ‖ spliced), and the accuracy recovered

    (acc_SAE − acc_ablate) / (acc_clean − acc_ablate)

against a named ablation of the same tokens ("mean": each token position replaced by its mean
over the evaluation images; "zero": replaced by zeros). This is the "downstream" / "spliced"
reconstruction score of the SAE literature (e.g. Gao et al. 2024, "Scaling and evaluating
sparse autoencoders", §4.1, and the CE-loss-recovered score of Bricken et al. 2023). CLIP-like
models score zero-shot logits ``scale · cos(image, text) (+ bias)`` with the model's own
logit scale; classifiers (the organism) score their output logits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae import hooks
from probe_sae.data.images import Images, image_source, to_batch
from probe_sae.interventions.splice import check_width, splice
from probe_sae.models import VisionModel
from probe_sae.models.layout import TokenSelection
from probe_sae.saes import SAE

Ablation = Literal["mean", "zero"]
#: Class indices (N,) or multi-hot presence (N, n_classes), one row per image.
Labels = Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[float]]


@dataclass
class FidelityReport:
    """Downstream fidelity of one spliced SAE (see the module docstring for the definitions).

    Attributes:
        embedding_cosine: mean over images of cos(clean output, spliced output).
        logit_kl: mean over images of KL(clean ‖ spliced) of the class distributions (softmax
            over classes; for multi-label heads the mean over classes of the Bernoulli KL).
        accuracy_*: top-1 accuracy (single-label) or mean per-class accuracy of
            ``logit > 0`` (multi-label) with the clean, spliced and ablated model.
        accuracy_recovered: ``(acc_SAE − acc_ablate)/(acc_clean − acc_ablate)``; ``None`` when
            the ablation does not lower the accuracy (the ratio is undefined).
        ablation_*: the same figures for the ablation itself, for scale.
    """

    layer: str
    tokens: str
    ablation: str
    n_images: int
    embedding_cosine: float
    ablation_embedding_cosine: float
    logit_kl: float | None = None
    ablation_logit_kl: float | None = None
    accuracy_clean: float | None = None
    accuracy_spliced: float | None = None
    accuracy_ablated: float | None = None
    accuracy_recovered: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        rows = [
            ("layer (tokens)", f"{self.layer} ({self.tokens})"),
            ("images", f"{self.n_images:,}"),
            ("final-embedding cosine", fmt(self.embedding_cosine)),
            ("logit KL (clean ‖ spliced)", fmt(self.logit_kl)),
            (
                "accuracy clean / spliced",
                f"{fmt(self.accuracy_clean)} / {fmt(self.accuracy_spliced)}",
            ),
            (f"accuracy with {self.ablation} ablation", fmt(self.accuracy_ablated)),
            (f"accuracy recovered (vs {self.ablation} ablation)", fmt(self.accuracy_recovered)),
            (
                f"{self.ablation} ablation: embedding cosine / logit KL",
                f"{fmt(self.ablation_embedding_cosine)} / {fmt(self.ablation_logit_kl)}",
            ),
        ]
        return "\n".join(
            ["| spliced fidelity | value |", "| --- | ---: |", *[f"| {a} | {b} |" for a, b in rows]]
        )


def logit_kl(clean_BC: Tensor, other_BC: Tensor, multilabel: bool) -> Tensor:
    """(B,) KL(clean ‖ other) per image: softmax over classes, or for a multi-label head the
    mean over classes of the KL between Bernoulli(σ(clean)) and Bernoulli(σ(other))."""
    clean_BC, other_BC = clean_BC.double(), other_BC.double()
    if not multilabel:
        log_p, log_q = F.log_softmax(clean_BC, dim=-1), F.log_softmax(other_BC, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    log_p, log_q = F.logsigmoid(clean_BC), F.logsigmoid(other_BC)
    log_1p, log_1q = F.logsigmoid(-clean_BC), F.logsigmoid(-other_BC)
    kl = log_p.exp() * (log_p - log_q) + log_1p.exp() * (log_1p - log_1q)
    return kl.mean(dim=-1)


def _correct(logits_BC: Tensor, labels: Tensor, multilabel: bool) -> Tensor:
    """(B,) fraction correct per image."""
    if multilabel:
        return ((logits_BC > 0) == labels.bool()).double().mean(dim=-1)
    return (logits_BC.argmax(dim=-1) == labels).double()


def _labels_tensor(labels: Labels, n: int | None) -> Tensor:
    out = torch.as_tensor(labels)
    if n is not None and out.shape[0] != n:
        raise ValueError(f"got {out.shape[0]} labels for {n} images; give one label per image")
    if out.ndim not in (1, 2):
        raise ValueError(
            "labels must be class indices (N,) or multi-hot presence (N, n_classes), got shape "
            f"{tuple(out.shape)}"
        )
    return out


def _batches(
    images: Images, labels: Tensor | None, model: VisionModel, batch_size: int
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (pixels, labels or None) over the readable images."""
    source = image_source(images)
    start = 0
    while True:
        chunk = source.read(start, batch_size)
        if not chunk:
            return
        keep = [i for i, im in enumerate(chunk) if im is not None]
        if keep:
            pixels = to_batch([chunk[i] for i in keep], model.preprocess)
            lab = labels[[start + i for i in keep]] if labels is not None else None
            yield pixels, lab
        start += len(chunk)


@torch.no_grad()
def spliced_fidelity(
    model: VisionModel,
    layer: str | int,
    sae: SAE,
    images: Images,
    *,
    labels: Labels | None = None,
    prompts: Sequence[str] | Tensor | None = None,
    ablation: Ablation = "mean",
    tokens: TokenSelection = "all",
    batch_size: int = 64,
    encode_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> FidelityReport:
    """Splice ``sae`` into ``layer`` (no error term) and measure what changes downstream.

    Args:
        model: a ``VisionModel``; its output is the "final embedding" (CLIP: the image
            embedding; a classifier such as the organism: its class logits).
        layer: the layer the SAE was trained on.
        images: a (N, C, H, W) tensor, a folder, a Dataset or an iterable of PIL images.
        labels: class indices (N,) or multi-hot presence (N, n_classes) for accuracy; without
            labels only the embedding cosine and the logit KL are reported.
        prompts: class prompts (or (P, e) text embeddings) for CLIP-like models: logits are
            then the model's zero-shot logits; without prompts the output itself is the logits.
        ablation: ``"mean"`` (each selected token position replaced by its mean over
            ``images``) or ``"zero"``; the baseline of accuracy recovered.
        tokens: which tokens of the layer the SAE replaces (as it was trained: ``"all"``...).

    Returns:
        A :class:`FidelityReport`.

    Example::

        report = spliced_fidelity(model, "blocks.2", sae, images, labels=presence)
        print(report.to_markdown())
    """

    if ablation not in ("mean", "zero"):
        raise ValueError(f"ablation must be 'mean' or 'zero', got {ablation!r}")
    name = check_width(model, layer, sae)
    source = image_source(images)
    label_t = _labels_tensor(labels, source.length) if labels is not None else None
    multilabel = label_t is not None and label_t.ndim == 2
    text = None
    if prompts is not None:
        text = (
            F.normalize(prompts, dim=-1)
            if isinstance(prompts, Tensor)
            else model.encode_text(list(prompts), normalize=True)
        )

    def logits_of(out: Tensor) -> Tensor:
        if text is None:
            return out
        logits = model.logit_scale * F.normalize(out, dim=-1) @ text.to(out).T
        bias = model.logit_bias
        return logits + bias if bias is not None else logits

    replacement: Tensor | None = None
    if ablation == "mean":
        total, n = None, 0
        for pixels, _ in _batches(source, None, model, batch_size):
            got = hooks.capture(model, pixels, name, tokens=tokens)[name]
            acts = got.acts.view(got.n_images, got.tokens_per_image, -1).double()
            total = acts.sum(0) if total is None else total + acts.sum(0)
            n += got.n_images
        if n == 0:
            raise ValueError("no readable images to evaluate")
        replacement = (total / n).float()[None]
    else:
        replacement = torch.zeros(1, 1, sae.d_model)

    was_training = sae.training
    sae.eval()
    sums = {
        "cos": 0.0,
        "abl_cos": 0.0,
        "kl": 0.0,
        "abl_kl": 0.0,
        "acc": 0.0,
        "acc_sae": 0.0,
        "acc_abl": 0.0,
    }
    seen = 0
    bar = tqdm(total=source.length, desc="spliced fidelity", unit="img", disable=not progress)
    try:
        for pixels, lab in _batches(source, label_t, model, batch_size):
            clean = model(pixels).float()
            with splice(model, name, sae, tokens=tokens, encode_options=encode_options):
                spliced = model(pixels).float()
            with hooks.replace(model, name, replacement, tokens=tokens):
                ablated = model(pixels).float()
            sums["cos"] += float(F.cosine_similarity(clean, spliced, dim=-1).double().sum())
            sums["abl_cos"] += float(F.cosine_similarity(clean, ablated, dim=-1).double().sum())
            if text is not None or label_t is not None:
                lc, ls, la = logits_of(clean), logits_of(spliced), logits_of(ablated)
                sums["kl"] += float(logit_kl(lc, ls, multilabel).sum())
                sums["abl_kl"] += float(logit_kl(lc, la, multilabel).sum())
                if lab is not None:
                    sums["acc"] += float(_correct(lc, lab, multilabel).sum())
                    sums["acc_sae"] += float(_correct(ls, lab, multilabel).sum())
                    sums["acc_abl"] += float(_correct(la, lab, multilabel).sum())
            seen += pixels.shape[0]
            bar.update(pixels.shape[0])
    finally:
        bar.close()
        sae.train(was_training)
    if seen == 0:
        raise ValueError("no readable images to evaluate")
    has_logits = text is not None or label_t is not None
    report = FidelityReport(
        layer=name,
        tokens=tokens if isinstance(tokens, str) else "custom",
        ablation=ablation,
        n_images=seen,
        embedding_cosine=sums["cos"] / seen,
        ablation_embedding_cosine=sums["abl_cos"] / seen,
        logit_kl=sums["kl"] / seen if has_logits else None,
        ablation_logit_kl=sums["abl_kl"] / seen if has_logits else None,
    )
    if label_t is not None:
        acc, acc_sae, acc_abl = (sums[k] / seen for k in ("acc", "acc_sae", "acc_abl"))
        gap = acc - acc_abl
        report.accuracy_clean, report.accuracy_spliced, report.accuracy_ablated = (
            acc,
            acc_sae,
            acc_abl,
        )
        report.accuracy_recovered = (acc_sae - acc_abl) / gap if gap > 1e-12 else None
        if report.accuracy_recovered is not None and not math.isfinite(report.accuracy_recovered):
            report.accuracy_recovered = None
    return report
