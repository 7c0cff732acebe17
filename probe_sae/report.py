"""A self-contained HTML report on one or several SAEs: ``write_report(saes, images, out)``.

One file, no external CSS, JS, fonts or network: every figure is a base64 PNG in a ``data:``
URI, so the page can be mailed, archived or opened offline. Per SAE it shows

* its configuration (family, concepts, width, model, layer, tokens);
* its metrics: `probe_sae.metrics.evaluate` on the given images streamed through the model
  (FVU / R², L0 by token kind, dead and dense fractions, geometry), unless ``reports=`` gives them;
* its training curves when a ``training_log.json`` sits in its folder (`TrainResult.save`);
* its **top concepts**, each with its top images and heatmaps, and an atlas of more concepts.

Concepts are ranked by ``rank`` (see `probe_sae.plotting.TopImages.rank`); the default,
``"mass"``, orders them by their total activation over every patch token of the report's
images, i.e. by how much of the layer's coded signal they carry on these images. Concepts that
never fire are left out. An image's score for a concept is its maximum patch activation.

Look at a report headless (what the tests do)::

    chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=$(mktemp -d) \\
        --screenshot=report.png --window-size=1280,2000 file:///abs/path/report.html
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from probe_sae._atomic import atomic_write
from probe_sae.config import to_dict
from probe_sae.constants import CONFIG_NAME, TRAINING_LOG
from probe_sae.data.images import Images, ImageSource, image_source
from probe_sae.saes import SAE, load_sae

if TYPE_CHECKING:  # types only: matplotlib and the model stack load when a report is written
    from matplotlib.figure import Figure

    from probe_sae.metrics import EvalReport
    from probe_sae.models import VisionModel
    from probe_sae.models.layout import TokenSelection
    from probe_sae.stream.activations import ActivationStream

#: section content: trusted HTML (inserted as is), a matplotlib ``Figure``, or a list of them
SectionContent = Any

#: the SAEs of a report: one SAE, a dict name -> SAE or SAE folder, one SAE folder, a folder of
#: SAE folders, or a list of folders
SAEs = SAE | Mapping[str, SAE | str | Path] | str | Path | Iterable[str | Path]


@dataclass
class _Entry:
    """One SAE to report on."""

    name: str
    sae: SAE
    folder: Path | None = None
    metrics_log: list[dict[str, Any]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class _Head(ImageSource):
    """The first ``limit`` images of a source."""

    def __init__(self, source: ImageSource, limit: int | None) -> None:
        self.source, self.limit = source, limit

    def __len__(self) -> int:
        n = self.source.length
        if n is None:
            if self.limit is None:
                raise TypeError("this image source has no known length")
            return self.limit
        return n if self.limit is None else min(n, self.limit)

    def read(self, start: int, count: int) -> list[Any]:
        if self.limit is not None:
            count = max(0, min(count, self.limit - start))
        return self.source.read(start, count) if count else []

    @property
    def skipped(self) -> int:  # type: ignore[override]
        return self.source.skipped

    def name(self, index: int) -> str:
        return self.source.name(index)


# ----------------------------------------------------------------------------- inputs
def _is_sae_folder(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file()


def _entries(saes: SAEs) -> list[_Entry]:
    """SAEs from a dict name → SAE, one SAE folder, a folder of SAE folders, or a list of folders."""
    if isinstance(saes, SAE):
        return [_Entry(saes.family, saes)]
    if isinstance(saes, Mapping):
        out = []
        for name, sae in saes.items():
            if isinstance(sae, (str, Path)):
                out.append(_from_folder(Path(sae), str(name)))
            elif isinstance(sae, SAE):
                out.append(_Entry(str(name), sae))
            else:
                raise TypeError(
                    f"saes[{name!r}] is a {type(sae).__name__}; give SAEs or SAE folders."
                )
        return out
    if isinstance(saes, (str, Path)):
        path = Path(saes)
        if _is_sae_folder(path):
            return [_from_folder(path)]
        subs = sorted(p for p in path.iterdir() if _is_sae_folder(p)) if path.is_dir() else []
        if not subs:
            raise ValueError(
                f"{path} holds no saved SAE: give a folder written by sae.save_pretrained or "
                f"TrainResult.save (with config.json + model.safetensors), or a folder of them."
            )
        return [_from_folder(p) for p in subs]
    if isinstance(saes, Iterable):
        return [e for item in saes for e in _entries(item)]
    raise TypeError(
        f"saes must be an SAE, a dict name -> SAE, or SAE folders; got {type(saes).__name__}."
    )


def _from_folder(folder: Path, name: str | None = None) -> _Entry:
    log = folder / TRAINING_LOG
    rows = json.loads(log.read_text()) if log.is_file() else None
    return _Entry(name or folder.name, load_sae(folder), folder, rows)


class _Models:
    """Models by ``load_model`` spec, loaded once each."""

    def __init__(self, model: VisionModel | None) -> None:
        self.model = model
        self.cache: dict[str, VisionModel] = {}

    def get(self, entry: _Entry) -> VisionModel:
        if self.model is not None:
            return self.model
        spec = entry.sae.provenance.get("model")
        if not spec:
            raise ValueError(
                f"SAE {entry.name!r} does not record the model it was trained on "
                f"(sae.provenance has no 'model'); pass model=probe_sae.load_model(SPEC) "
                f"(or a wrapped module) to write_report."
            )
        if spec not in self.cache:
            from probe_sae.models import load_model

            seed = entry.sae.provenance.get("seed")
            self.cache[spec] = load_model(spec, seed=0 if seed is None else int(seed))
        return self.cache[spec]


def _hyperparameters(sae: SAE) -> dict[str, Any]:
    """The family's own config fields (``k``, ``l1_coeff``, the archetypal dictionary, the
    seed, ...), without those the configuration table shows already."""
    shown = ("family", "n_concepts", "expansion")
    return {k: v for k, v in to_dict(sae.config).items() if k not in shown}


def _layer(entry: _Entry, layer: str | int | None) -> str | int:
    if layer is not None:
        return layer
    found = entry.sae.provenance.get("layer")
    if found is None:
        raise ValueError(
            f"SAE {entry.name!r} does not record its layer (sae.provenance has no 'layer'); "
            f"pass layer= to write_report (model.layers() lists them)."
        )
    return found


def _eval_stream(
    model: VisionModel,
    source: ImageSource,
    layer: str | int,
    tokens: TokenSelection,
    image_batch_size: int,
) -> ActivationStream:
    """A stream over every token of ``source`` at ``layer``, in order (with token positions)."""
    from probe_sae.stream.activations import ActivationStream

    return ActivationStream(
        model, source, layer, tokens=tokens, batch_size=4096, buffer_tokens=4096,
        image_batch_size=image_batch_size, provenance=True, drop_last=False,
    )  # fmt: skip


# ----------------------------------------------------------------------------- rendering
def figure_to_data_uri(fig: Figure, dpi: int = 80, colours: int | None = 256) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI.

    With ``colours`` the PNG is palette-quantised (about 3× smaller for image grids).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if colours:
        from PIL import Image

        buf.seek(0)
        small = Image.open(buf).convert("RGB").quantize(colours, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str, dpi: int) -> str:
    return f'<img alt="{html.escape(alt)}" src="{figure_to_data_uri(fig, dpi)}">'


def _table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 12:
        return f"{list(value[:12])}… ({len(value)} values)"
    return str(value)


def _metric_rows(report: EvalReport | Mapping[str, Any]) -> list[tuple[str, Any]]:
    data = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        if key in ("family", "d_model", "n_concepts", "firing_frequency"):
            continue
        if isinstance(value, Mapping):
            rows += [(f"{key.replace('_', ' ')}: {k}", v) for k, v in value.items()]
        else:
            rows.append((key.replace("_", " "), value))
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "-", text).strip("-") or "section"


def _content(content: SectionContent, title: str, dpi: int) -> str:
    if isinstance(content, str):
        return content
    if hasattr(content, "savefig"):
        return _img(content, title, dpi)
    if isinstance(content, Sequence):
        return "".join(_content(c, title, dpi) for c in content)
    raise TypeError(
        f"section {title!r}: content must be an HTML string, a matplotlib Figure or a list of "
        f"them, not {type(content).__name__}."
    )


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1200px;padding:1em 2em;color:#222;background:#fafafa}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f0f0f0}
td{font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;display:block;margin:.5em 0}
nav a{margin-right:1em}.note{color:#555;font-size:.9em;max-width:60em}
section{background:#fff;padding:.5em 1.5em 1em;margin:1em 0;border-radius:6px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.row{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}
"""


# ----------------------------------------------------------------------------- report
def write_report(
    saes: SAEs,
    images: Images,
    out_path: str | Path,
    *,
    model: VisionModel | None = None,
    layer: str | int | None = None,
    reports: Mapping[str, EvalReport | Mapping[str, Any]] | None = None,
    training_logs: Mapping[str, Sequence[Mapping[str, Any]] | str | Path] | None = None,
    n_concepts: int = 8,
    n_images: int = 6,
    atlas_concepts: int = 24,
    rank: str = "mass",
    max_images: int | None = 256,
    image_batch_size: int = 16,
    extra_sections: Sequence[tuple[str, SectionContent]] = (),
    title: str | None = None,
    dpi: int = 80,
    progress: bool = True,
    labels: Any = None,
    label_names: Sequence[str] | None = None,
    steering: Any = None,
    min_pixels: int = 160,
    browser: str | Path | None = None,
) -> Path:
    """Write a self-contained HTML report on ``saes`` over ``images`` to ``out_path``.

    Args:
        saes: a dict name → SAE (or SAE folder), one SAE folder, a folder of SAE folders (what
            `TrainResult.save` writes), or a list of folders.
        images: a (N, C, H, W) tensor (pixels in [0, 1] are shown as they are), an image
            folder, a Dataset or PIL images (shown resized and centre-cropped to the model's
            input); the first ``max_images`` are used for metrics and top images.
        model: the model for every SAE; default ``load_model(sae.provenance["model"])``.
        layer: the layer for every SAE; default ``sae.provenance["layer"]``.
        reports: precomputed metrics by SAE name (`EvalReport` or dict); others are evaluated.
        training_logs: metrics rows (or a ``training_log.json`` path) by SAE name; default the
            ``training_log.json`` in the SAE folder, if any.
        n_concepts / n_images: top concepts shown with ``n_images`` top images each.
        atlas_concepts: concepts in the atlas (best image each); 0 for none.
        rank: how top concepts are chosen, ``"mass"`` (default), ``"max"`` or
            ``"image_frequency"`` (see `probe_sae.plotting.TopImages.rank`).
        extra_sections: ``(title, content)`` pairs appended at the end; content is an HTML
            string (inserted as is: escape untrusted text), a ``Figure`` or a list of them.
        title: the page title; default names the model, layer(s) and SAEs.
        dpi: resolution of the embedded figures (the page size grows with its square).
        labels: (N, K) presence of K known objects in ``images`` (e.g. ``generate(n).presence``
            or ``parse_images("synthetic:N").labels``); concepts are then named by the object
            they detect best (ROC AUC of the image's max code, shown when ≥ 0.8) and a table
            gives each object's best concept.
        label_names: the K objects' names (default ``probe_sae.organism.KIND_NAMES`` when K
            matches it, else ``label 0``, ...).
        steering: a steering experiment to plot as a dose-response (`probe_sae.demo`'s
            ``DemoSteering``, or a dict with ``multiples``, ``p_kind``, optional
            ``off_target``, ``kind``, ``concept``, ``n_images``).
        min_pixels: images smaller than this are upsampled (nearest neighbour) in the figures.
        browser: the start page of a concept browser of these SAEs (`probe_sae.browse`, in `probe_sae.browser`); the
            report links it (by a path relative to the report).

    Returns:
        The path written (atomically: a failure leaves an older report in place).

    Raises:
        ValueError: no model or layer can be found for an SAE, or no SAE is given.
    """
    import matplotlib  # noqa: F401  (fail early, before any work, if matplotlib is missing)

    from probe_sae.metrics import evaluate
    from probe_sae.plotting import (
        concept_tiles,
        draw_atlas,
        draw_top_images,
        plot_fvu_l0,
        top_activating_images,
    )

    entries = _entries(saes)
    truth = _Truth.make(labels, label_names)
    if not entries:
        raise ValueError("no SAE to report on: give a dict name -> SAE or SAE folders.")
    for section_title, _ in extra_sections:
        if not isinstance(section_title, str):
            raise TypeError("extra_sections holds (title, content) pairs with a string title.")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = _Head(image_source(images), max_images)
    models = _Models(model)
    reports = dict(reports or {})
    evaluated: dict[str, Any] = {}
    blocks: list[str] = []
    for entry in tqdm(entries, desc="report", unit="sae", disable=not progress):
        vm = models.get(entry)
        where = _layer(entry, layer)
        sae = entry.sae
        tokens = sae.provenance.get("tokens", "all")
        entry.info = {
            "family": sae.label,
            "n_concepts": sae.n_concepts,
            "d_model": sae.d_model,
            "model": sae.provenance.get("model") or getattr(vm, "name", "?"),
            "layer": vm.resolve(where) if hasattr(vm, "resolve") else where,
            "tokens": tokens,
            **{f"hyperparameter: {k}": v for k, v in _hyperparameters(sae).items()},
        }
        if entry.name in reports:
            rep = reports[entry.name]
        else:
            stream = _eval_stream(vm, source, where, tokens, image_batch_size)
            rep = evaluate(sae, stream, layout=vm.layout, progress=progress)
        evaluated[entry.name] = rep
        parts = [
            f'<section class="sae" id="sae-{_slug(entry.name)}"><h2>SAE {html.escape(entry.name)}</h2>',
            '<div class="row"><div><h3>Configuration</h3>',
            _table(entry.info.items()),
            "</div><div><h3>Metrics</h3>",
            _table(_metric_rows(rep)),
            "</div></div>",
        ]
        log = (training_logs or {}).get(entry.name, entry.metrics_log)
        curves = _curves(log, entry.name, dpi)
        top = top_activating_images(
            vm, where, sae, source, n=n_images, batch_size=image_batch_size, progress=progress,
            keep_scores=truth is not None,
        )  # fmt: skip
        chosen = top.rank(rank, max(n_concepts, atlas_concepts))
        tiles = concept_tiles(
            vm, where, sae, source, top, chosen, n=n_images, batch_size=image_batch_size
        )
        if truth is not None:
            tiles.labels = truth.name_concepts(top, tiles.concepts)
            parts.append(truth.table(top))
        parts += _top_concepts(tiles.head(n_concepts), entry.name, rank, top.n_images, n_images)
        draw = {"min_pixels": min_pixels, "contour": True, "alpha": 0.55}
        if tiles.concepts:
            grid = draw_top_images(tiles.head(n_concepts), tile=_tile(dpi, min_pixels), **draw)
            parts.append(_img(grid, f"top images of {entry.name}", dpi))
        if atlas_concepts > 0 and tiles.concepts:
            atlas = tiles.head(atlas_concepts)
            parts += [
                "<h3>Concept atlas</h3>",
                f'<p class="note">The {len(atlas.concepts)} best concepts by {html.escape(rank)}, '
                f"each over its best image.</p>",
                _img(draw_atlas(atlas, tile=_tile(dpi, min_pixels), **draw),
                     f"concept atlas of {entry.name}", dpi),
            ]  # fmt: skip
        parts += ["<h3>Training curves</h3>", curves, "</section>"]
        blocks.append("".join(parts))
    summary = _summary(entries, evaluated)
    if len(entries) > 1:
        front = plot_fvu_l0({e.name: evaluated[e.name] for e in entries})
        summary += "<h3>FVU against L0</h3>" + _img(front, "FVU against L0", dpi)
    sections = list(extra_sections)
    if steering is not None:
        sections.insert(0, ("Steering", _steering(steering, dpi)))
    extra_sections = sections
    title = title or _title(entries)
    extras = [
        f'<section class="extra" id="extra-{_slug(t)}"><h2>{html.escape(t)}</h2>{_content(c, t, dpi)}</section>'
        for t, c in extra_sections
    ]
    nav = " ".join(
        [f'<a href="#sae-{_slug(e.name)}">{html.escape(e.name)}</a>' for e in entries]
        + [f'<a href="#extra-{_slug(t)}">{html.escape(t)}</a>' for t, _ in extra_sections]
    )
    if browser is not None:
        import os

        target = os.path.relpath(Path(browser).resolve(), out.parent.resolve())
        nav += f' <a id="browser-link" href="{html.escape(Path(target).as_posix())}">Concept browser</a>'
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="meta">probe_sae report · {when} · {source.length or "?"} images · '
        f"{len(entries)} SAE(s)</p><nav>{nav}</nav>"
        f'<section id="summary"><h2>Summary</h2>{summary}</section>'
        + "".join(blocks)
        + "".join(extras)
        + "</body></html>\n"
    )
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out


_RANK_NOTE = {
    "mass": "total activation over all patch tokens of all images",
    "max": "highest single patch activation",
    "image_frequency": "fraction of images on which the concept fires",
}


def _summary(entries: list[_Entry], evaluated: Mapping[str, Any]) -> str:
    head = "<tr><th>SAE</th><th>family</th><th>concepts</th><th>layer</th><th>FVU</th><th>L0</th><th>dead</th></tr>"
    rows = []
    for e in entries:
        rep = evaluated[e.name]
        get = rep.get if isinstance(rep, Mapping) else lambda k, r=rep: getattr(r, k, None)
        dead = get("dead_fraction")
        cells = [
            f'<a href="#sae-{_slug(e.name)}">{html.escape(e.name)}</a>',
            html.escape(str(e.info.get("family"))),
            html.escape(str(e.info.get("n_concepts"))),
            html.escape(str(e.info.get("layer"))),
            html.escape(_fmt(get("fvu"))),
            html.escape(_fmt(get("l0"))),
            "?" if dead is None else f"{100 * float(dead):.1f} %",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


# ----------------------------------------------------------------------------- sections
def _tile(dpi: int, min_pixels: int) -> float:
    """Tile size in inches so that a tile spans about ``min_pixels`` pixels at ``dpi``."""
    return max(1.3, min_pixels / dpi)


def _top_concepts(tiles: Any, name: str, rank: str, seen: int, n_images: int) -> list[str]:
    """The heading, note and per-concept list (image names, scores) of the top concepts."""
    note = (
        f'<p class="note">{len(tiles.concepts)} concepts ranked by <b>{html.escape(rank)}</b> '
        f"({_RANK_NOTE.get(rank, '')}) over {seen} images; each row shows a concept's "
        f"{n_images} images with the highest maximum patch activation (title: image name · "
        f"that activation), the concept's codes over the patch grid drawn over the image "
        f"(brighter = stronger, outlined above half of the row's scale).</p>"
    )
    if not tiles.concepts:
        return ["<h3>Top concepts</h3>", note, "<p>No concept fired.</p>"]
    items = []
    for r in range(len(tiles.concepts)):
        shown = ", ".join(
            html.escape(tiles.caption(r, j)) for j in range(len(tiles.image_index[r]))
        )
        items.append(f"<li><b>{html.escape(tiles.concept_label(r))}</b> — {shown}</li>")
    listing = f'<ul class="concepts" id="concepts-{_slug(name)}">{"".join(items)}</ul>'
    return ["<h3>Top concepts</h3>", note, listing]


def _curves(log: Any, name: str, dpi: int) -> str:
    """Training curves of the quantities that change; constant ones said in words."""
    from probe_sae.plotting import curve_series, plot_training_curves

    if not log:
        return f'<p class="note">No {TRAINING_LOG} next to this SAE.</p>'
    varying, constant = curve_series(log)
    words = "; ".join(
        f"{key} = {_fmt(v)}" + (f" ({run})" if len(runs) > 1 else "")
        for key, runs in constant.items()
        for run, v in runs.items()
    )
    parts = []
    if varying:
        parts.append(_img(plot_training_curves(log), f"training curves of {name}", dpi))
    if words:
        parts.append(f'<p class="note constant">Constant during training (not drawn): '
                     f"{html.escape(words)}.</p>")  # fmt: skip
    return "".join(parts)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, Mapping) else getattr(obj, key, default)


def _steering(steering: Any, dpi: int) -> str:
    """A steering experiment as a dose-response plot and a sentence."""
    from probe_sae.plotting import plot_steering

    multiples, p_kind = list(_get(steering, "multiples", [])), list(_get(steering, "p_kind", []))
    off, kind = _get(steering, "off_target"), str(_get(steering, "kind", "target"))
    concept, n = _get(steering, "concept"), _get(steering, "n_images")
    fig = plot_steering(
        multiples, p_kind, None if off is None else list(off), target_label=f"P({kind})",
        title=f"adding concept {concept} to images without a {kind}",
    )  # fmt: skip
    steps = ", ".join(f"{m:g}× → {p:.3f}" for m, p in zip(multiples, p_kind, strict=True))
    text = (
        f"Concept {concept} added to every token of {n if n is not None else 'the'} images "
        f"without a {kind}: P({kind}) {steps}."
    )
    return f'<p id="steering-note">{html.escape(text)}</p>' + _img(fig, "steering", dpi)


def _title(entries: list[_Entry]) -> str:
    """``"topk (32 concepts), mp (32 concepts) on organism · blocks.2"``."""
    saes = ", ".join(f"{e.name} ({e.info.get('n_concepts')} concepts)" for e in entries)
    models = ", ".join(dict.fromkeys(str(e.info.get("model")) for e in entries))
    layers = ", ".join(dict.fromkeys(str(e.info.get("layer")) for e in entries))
    return f"SAEs {saes} on {models} · {layers}"


def _auc_columns(scores_NC: Any, labels_N: Any) -> Any:
    """(C,) ROC AUC of each column of ``scores`` for binary ``labels`` (ties count 1/2)."""
    import numpy as np
    from scipy.stats import rankdata

    pos = np.asarray(labels_N).astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(scores_NC.shape[1], np.nan)
    ranks = rankdata(np.asarray(scores_NC, dtype=np.float64), axis=0)
    return (ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class _Truth:
    """Known objects in the report's images: concepts named by the object they detect."""

    labels: Any  # (N, K) numpy bool
    names: list[str]
    min_auc: float = 0.8

    @classmethod
    def make(cls, labels: Any, names: Sequence[str] | None) -> _Truth | None:
        if labels is None:
            return None
        import numpy as np

        arr = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels) > 0.5
        if arr.ndim == 1:
            arr = arr[:, None]
        if names is None:
            from probe_sae.organism import KIND_NAMES

            names = KIND_NAMES if len(KIND_NAMES) == arr.shape[1] else None
        names = list(names or (f"label {j}" for j in range(arr.shape[1])))
        if len(names) != arr.shape[1]:
            raise ValueError(f"{len(names)} label_names for {arr.shape[1]} label columns.")
        return cls(arr, names)

    def aucs(self, top: Any) -> Any:
        """(K, C) AUC of each scored concept for each object, on the images the report saw."""
        import numpy as np

        scores = top.image_scores.numpy()
        labels = self.labels[: scores.shape[0]]
        if labels.shape[0] != scores.shape[0]:
            raise ValueError(f"labels cover {labels.shape[0]} images, the report read "
                             f"{scores.shape[0]}: give one label row per image.")  # fmt: skip
        return np.stack([_auc_columns(scores, labels[:, j]) for j in range(labels.shape[1])])

    def name_concepts(self, top: Any, concepts: Sequence[int]) -> list[str]:
        """Per concept, the object it detects best (``"red_disc (AUC 0.97)"``) or ``""``."""
        import numpy as np

        auc = np.nan_to_num(self.aucs(top), nan=0.0)
        out = []
        for c in concepts:
            col = auc[:, top.row(c)]
            j = int(col.argmax())
            out.append(f"{self.names[j]} (AUC {col[j]:.2f})" if col[j] >= self.min_auc else "")
        return out

    def table(self, top: Any) -> str:
        """Each object, the concept that detects it best and that AUC."""
        import numpy as np

        auc = self.aucs(top)
        rows = []
        for j, name in enumerate(self.names):
            if np.isnan(auc[j]).all():
                rows.append((name, "n/a (present in all or none of the images)"))
                continue
            best = int(np.nanargmax(auc[j]))
            rows.append((name, f"concept {int(top.concepts[best])} (AUC {auc[j, best]:.3f})"))
        return (
            "<h3>Ground truth</h3><p class=\"note\">Each known object and the concept whose "
            "per-image maximum code detects it best (ROC AUC over the report's images).</p>"
            + _table(rows).replace("<table>", '<table class="truth">', 1)
        )
