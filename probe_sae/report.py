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

            self.cache[spec] = load_model(spec)
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
    title: str = "probe_sae report",
    dpi: int = 80,
    progress: bool = True,
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
        dpi: resolution of the embedded figures (the page size grows with its square).

    Returns:
        The path written (atomically: a failure leaves an older report in place).

    Raises:
        ValueError: no model or layer can be found for an SAE, or no SAE is given.
    """
    import matplotlib  # noqa: F401  (fail early, before any work, if matplotlib is missing)

    from probe_sae.metrics import evaluate
    from probe_sae.plotting import (
        draw_atlas,
        draw_top_images,
        plot_fvu_l0,
        plot_training_curves,
        top_activating_images,
    )
    from probe_sae.plotting.top_images import ConceptTiles, concept_tiles

    entries = _entries(saes)
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
        if log:
            curves = _img(plot_training_curves(log), f"training curves of {entry.name}", dpi)
        else:
            curves = f'<p class="note">No {TRAINING_LOG} next to this SAE.</p>'
        top = top_activating_images(
            vm, where, sae, source, n=n_images, batch_size=image_batch_size, progress=progress
        )
        chosen = top.rank(rank, max(n_concepts, atlas_concepts))
        tiles = concept_tiles(
            vm, where, sae, source, top, chosen, n=n_images, batch_size=image_batch_size
        )
        head = ConceptTiles(
            *(getattr(tiles, f)[:n_concepts] for f in ConceptTiles.__dataclass_fields__)
        )
        parts += [
            "<h3>Top concepts</h3>",
            f'<p class="note">{len(head.concepts)} concepts ranked by <b>{html.escape(rank)}</b> '
            f"({_RANK_NOTE.get(rank, '')}) over {top.n_images} images; each row shows a "
            f"concept's {n_images} images with the highest maximum patch activation (title: "
            f"image number · that activation), the concept's codes over the patch grid drawn "
            f"over the image (brighter = stronger).</p>",
            _img(draw_top_images(head), f"top images of {entry.name}", dpi)
            if head.concepts
            else "<p>No concept fired.</p>",
        ]
        if atlas_concepts > 0 and tiles.concepts:
            atlas = ConceptTiles(
                *(getattr(tiles, f)[:atlas_concepts] for f in ConceptTiles.__dataclass_fields__)
            )
            parts += [
                "<h3>Concept atlas</h3>",
                f'<p class="note">The {len(atlas.concepts)} best concepts by {html.escape(rank)}, '
                f"each over its best image.</p>",
                _img(draw_atlas(atlas), f"concept atlas of {entry.name}", dpi),
            ]
        parts += ["<h3>Training curves</h3>", curves, "</section>"]
        blocks.append("".join(parts))
    summary = _summary(entries, evaluated)
    if len(entries) > 1:
        front = plot_fvu_l0({e.name: evaluated[e.name] for e in entries})
        summary += "<h3>FVU against L0</h3>" + _img(front, "FVU against L0", dpi)
    extras = [
        f'<section class="extra" id="extra-{_slug(t)}"><h2>{html.escape(t)}</h2>{_content(c, t, dpi)}</section>'
        for t, c in extra_sections
    ]
    nav = " ".join(
        [f'<a href="#sae-{_slug(e.name)}">{html.escape(e.name)}</a>' for e in entries]
        + [f'<a href="#extra-{_slug(t)}">{html.escape(t)}</a>' for t, _ in extra_sections]
    )
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
