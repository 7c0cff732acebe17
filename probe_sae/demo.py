"""``probe-sae demo``: the toolkit's main job, offline, on the model organism.

1. Load the organism (its weights ship with the package; without them it is trained once and
   cached, about 2.5 minutes on 2 cores).
2. Hook a middle layer and stream synthetic collages into TopK, RA-SAE and MP-SAE at once
   (one forward pass feeds all three trainers).
3. Evaluate each on held-out collages: FVU and L0 (CLS and patch tokens apart), soft
   identifiability against the known objects (Fel et al. 2025, §4), spliced fidelity.
4. One steering experiment: add the TopK concept that best detects an object to images
   without that object, and watch the organism's belief in it rise.
5. Write the HTML report (metrics, training curves, top images with heatmaps) and, next to
   it, the concept browser of the three SAEs over the held-out collages, which it links.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probe_sae.interventions import FidelityReport, spliced_fidelity
from probe_sae.metrics import evaluate, soft_identifiability
from probe_sae.models import VisionModel
from probe_sae.organism.world import KIND_NAMES, generate
from probe_sae.saes import SAE
from probe_sae.stream.activations import ActivationStream

FAMILIES = ("topk", "rasae", "mp")


@dataclass
class DemoSAE:
    """What the demo measured for one SAE on the held-out collages."""

    name: str
    fvu: float
    l0: float
    l0_cls: float
    l0_patch: float
    identifiability: float
    fidelity: FidelityReport
    folder: Path


@dataclass
class DemoSteering:
    """Adding one concept to images that lack its object, at several strengths."""

    kind: str
    concept: int
    auc: float
    value: float  # the 90th percentile of the concept's max code on images with the object
    multiples: list[float]
    p_kind: list[float]  # mean P(object) at each multiple of ``value``
    off_target: list[float]  # mean |change| of the other objects' probabilities
    n_images: int


@dataclass
class DemoResult:
    saes: list[DemoSAE]
    all_absent_baseline: float
    steering: DemoSteering
    layer: str
    n_train: int
    n_test: int
    out_dir: Path
    report: Path | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    browser: Path | None = None  # the concept browser's start page


def auc_per_column(scores_NA: Tensor, labels_N: Tensor) -> Tensor:
    """(A,) ROC AUC of each column of ``scores`` for the binary ``labels`` (ties count 1/2)."""
    pos, neg = labels_N.bool(), ~labels_N.bool()
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative images")
    s = scores_NA.double()
    # Mann–Whitney U via average ranks
    order = s.argsort(dim=0)
    ranks = torch.empty_like(s)
    ranks.scatter_(0, order, torch.arange(1, s.shape[0] + 1, dtype=s.dtype)[:, None].expand_as(s))
    for col in range(s.shape[1]):  # average ranks over ties (codes are often exactly 0)
        values, inverse = torch.unique(s[:, col], return_inverse=True)
        if values.numel() < s.shape[0]:
            sums = torch.zeros(values.numel(), dtype=s.dtype).index_add_(0, inverse, ranks[:, col])
            counts = torch.zeros(values.numel(), dtype=s.dtype).index_add_(
                0, inverse, torch.ones_like(ranks[:, col])
            )
            ranks[:, col] = (sums / counts)[inverse]
    u = ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


@torch.no_grad()
def image_codes(model: VisionModel, layer: str, sae: SAE, images: Tensor, batch: int = 128) -> Tensor:
    """(N, n_concepts) per image the max code over its patch tokens."""
    from probe_sae.hooks import capture

    out = []
    for start in range(0, images.shape[0], batch):
        got = capture(model, images[start : start + batch], layer, tokens="patches")[layer]
        codes = sae.encode(got.acts.to(sae.b_pre))
        out.append(codes.view(got.n_images, got.tokens_per_image, -1).amax(dim=1).float())
    return torch.cat(out)


@torch.no_grad()
def steering_experiment(
    model: VisionModel,
    layer: str,
    sae: SAE,
    images: Tensor,
    presence: Tensor,
    multiples: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0),
) -> DemoSteering:
    """Pick the object whose best concept detects it best (AUC of the per-image max code); add
    that concept, at multiples of the 90th percentile of its max code on images holding the
    object, to all tokens of images without it (error term kept). Reports P(object) at each
    strength and the mean |change| of the other objects' probabilities (off-target)."""
    from probe_sae.interventions import steer

    codes = image_codes(model, layer, sae, images)
    aucs = [auc_per_column(codes, presence[:, j]) for j in range(presence.shape[1])]
    best = [(float(a.max()), int(a.argmax())) for a in aucs]
    kind = max(range(len(best)), key=lambda j: best[j][0])
    auc, concept = best[kind]
    holds = presence[:, kind].bool()
    value = float(torch.quantile(codes[holds, concept], 0.9))
    without = images[~holds]
    before = torch.sigmoid(model(without).float())
    others = [j for j in range(presence.shape[1]) if j != kind]
    p_kind, off = [], []
    for m in multiples:
        after = torch.sigmoid(
            steer(model, layer, sae, {concept: m * value}, mode="add")(without).float()
        )
        p_kind.append(float(after[:, kind].mean()))
        off.append(float((after[:, others] - before[:, others]).abs().mean()))
    return DemoSteering(
        kind=KIND_NAMES[kind],
        concept=concept,
        auc=auc,
        value=value,
        multiples=list(multiples),
        p_kind=p_kind,
        off_target=off,
        n_images=int(without.shape[0]),
    )


def run_demo(
    out_dir: str | Path = "probe_sae_out/demo",
    *,
    n_train: int = 2048,
    n_test: int = 256,
    layer: str = "blocks.2",
    n_concepts: int = 512,
    k: int = 16,
    epochs: int = 2,
    seed: int = 0,
    report: bool = True,
    progress: bool = True,
) -> DemoResult:
    """Run the demo (see the module docstring); returns what it measured and wrote."""
    from probe_sae import load_model, train_sae

    t0 = time.perf_counter()
    out = Path(out_dir)
    model = load_model("organism")
    train = generate(n_train, seed=seed)
    test = generate(n_test, seed=seed + 10_000)
    result = train_sae(
        model,
        layer,
        train.images,
        sae=list(FAMILIES),
        n_concepts=n_concepts,
        k=k,
        batch_size=1024,
        buffer_tokens=32768,
        image_batch_size=128,
        epochs=epochs,
        seed=seed,
        lr=2e-3,
        log_every=10,
        progress=progress,
    )
    folders = result.save(out / "saes")
    name = model.resolve(layer)
    rows: list[DemoSAE] = []
    baseline = 0.0
    for run, sae in result.saes.items():
        stream = ActivationStream(
            model, test.images, name, batch_size=1024, provenance=True, drop_last=False
        )
        ev = evaluate(sae, stream, layout=model.layout)
        ident = soft_identifiability(image_codes(model, name, sae, test.images), test.presence)
        baseline = float(ident["all_absent_baseline"])
        fid = spliced_fidelity(model, name, sae, test.images, labels=test.presence)
        rows.append(
            DemoSAE(
                name=run,
                fvu=ev.fvu,
                l0=ev.l0,
                l0_cls=ev.l0_by_token_kind.get("cls", float("nan")),
                l0_patch=ev.l0_by_token_kind.get("patch", float("nan")),
                identifiability=float(ident["score"]),
                fidelity=fid,
                folder=folders[run],
            )
        )
    steering = steering_experiment(model, name, result.saes["topk"], test.images, test.presence)
    demo = DemoResult(
        saes=rows,
        all_absent_baseline=baseline,
        steering=steering,
        layer=name,
        n_train=n_train,
        n_test=n_test,
        out_dir=out,
        report=None,
        seconds=0.0,
    )
    if report:
        demo.browser = _build_browser(demo, model, test.images, progress)
        demo.report = _write_report(demo, model, test.images, test.presence)
    demo.seconds = time.perf_counter() - t0
    return demo


def results_table(result: DemoResult) -> str:
    """The per-SAE figures as a markdown table."""
    lines = [
        "| SAE | FVU | L0 (CLS) | L0 (patches) | identifiability | embedding cos | acc. recovered |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result.saes:
        rec = r.fidelity.accuracy_recovered
        lines.append(
            f"| {r.name} | {r.fvu:.3f} | {r.l0_cls:.1f} | {r.l0_patch:.1f} | "
            f"{r.identifiability:.3f} | {r.fidelity.embedding_cosine:.3f} | "
            f"{'n/a' if rec is None else f'{rec:.3f}'} |"
        )
    return "\n".join(lines)


def steering_text(s: DemoSteering) -> str:
    steps = ", ".join(
        f"{m:g}× → {p:.3f} (others ±{o:.3f})"
        for m, p, o in zip(s.multiples, s.p_kind, s.off_target, strict=True)
    )
    return (
        f"Steering: TopK concept {s.concept} detects {s.kind!r} (AUC {s.auc:.3f}). Adding it to "
        f"all tokens of {s.n_images} images without a {s.kind}, at multiples of {s.value:.2f} "
        f"(its 90th-percentile code on images with one), moves P({s.kind}): {steps}."
    )


def format_results(result: DemoResult) -> str:
    """What ``probe-sae demo`` prints."""
    return "\n\n".join(
        [
            f"probe_sae demo: TopK, RA-SAE and MP-SAE trained online on the organism's "
            f"{result.layer} over {result.n_train:,} synthetic collages (one forward pass feeds "
            f"all three), evaluated on {result.n_test} held-out collages.",
            results_table(result),
            f"Identifiability: all-absent baseline {result.all_absent_baseline:.3f}; "
            f"accuracy recovered is against mean ablation of the layer.",
            steering_text(result.steering),
        ]
    )


def _write_report(
    result: DemoResult, model: VisionModel, images: Tensor, presence: Tensor
) -> Path:
    from probe_sae.report import write_report

    summary = "<p>" + html.escape(format_results(result).split("\n\n")[0]) + "</p>"
    table = _html_table(result)
    return write_report(
        {r.name: r.folder for r in result.saes},
        images,
        result.out_dir / "report.html",
        model=model,
        title="probe_sae demo: SAEs on the model organism",
        rank="max",  # object-specific concepts peak highest; "mass" favours broad background ones
        labels=presence,
        label_names=list(KIND_NAMES),
        steering=result.steering,
        extra_sections=[("Demo summary", summary + table)],
        browser=result.browser,
    )


def _build_browser(result: DemoResult, model: VisionModel, images: Tensor, progress: bool) -> Path:
    """The concept browser of the demo's SAEs over the held-out collages (``OUT/browse``)."""
    from probe_sae.browser import build_site

    site = build_site(
        {r.name: r.folder for r in result.saes}, images, result.out_dir / "browse", model=model,
        layer=result.layer, progress=progress,
    )  # fmt: skip
    return site.root / "index.html"


def _html_table(result: DemoResult) -> str:
    md = results_table(result).splitlines()
    head = [c.strip() for c in md[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in md[2:]]
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body
    )
    note = (
        f"<p>Identifiability all-absent baseline: {result.all_absent_baseline:.3f}. "
        "Accuracy recovered is against mean ablation of the layer.</p>"
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>{note}"
