"""Build the concept browser: one streaming pass over the images, then data chunks on disk.

The site is static: HTML, JS and CSS from ``probe_sae/browser/assets``, JSON-in-JS data files
(each calls ``probe.index(...)`` or ``probe.chunk(...)``, so that they load with ``<script>`` tags
from ``file://``, where ``fetch`` of local files is blocked) and JPEG sprite sheets of thumbnails::

    OUT/index.html                 the list of SAEs (links to each browser)
    OUT/assets/                    app.js, style.css (shared)
    OUT/thumbs/t00000.jpg          thumbnails of images 0..255, 16 × 16 per sheet
    OUT/<sae>/index.html           one SAE's browser
    OUT/<sae>/data/index.js        per-concept figures for the list view (loaded first)
    OUT/<sae>/data/c00000.js       concepts 0..255: top images and maps, histogram, neighbours...
    OUT/<sae>/data/i00000.js       images 0..255: their top concepts and maps

The pass (`build_site`) reads each image once, captures every token of every SAE's layer in one
forward, encodes them and updates `probe_sae.browser.stats.ConceptStats`; thumbnails and per-image
chunks are written as their 256 images are done. Memory is flat in the number of images: it holds
per concept its top-k scores, image positions and ``uint8`` patch maps, its histogram and counts.
Heatmaps are not rendered at build time: the page draws each (h, w) map on a canvas over the
thumbnail (the browser's bilinear scaling upsamples it).
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae.browser.labels import (
    VOCABULARY,
    PromptScores,
    has_text_tower,
    image_text_cosines,
    read_vocabulary,
    text_embeddings,
    top_labels,
)
from probe_sae.browser.neighbours import nearest_concepts
from probe_sae.browser.stats import HIST_EDGES, TOKEN_KINDS, ConceptStats, kind_masks
from probe_sae.constants import CONFIG_NAME
from probe_sae.data.images import Images, ImageSource, image_source
from probe_sae.data.pixels import model_input, to_batch
from probe_sae.saes import SAE, load_sae

if TYPE_CHECKING:
    from probe_sae.models import VisionModel

#: concepts (and images) per data chunk
CHUNK = 256
#: thumbnails per sprite sheet side (a sheet holds SHEET² = CHUNK images)
SHEET = 16
#: neighbours by decoder cosine shown per concept
N_NEIGHBOURS = 8
#: archetypal candidates shown per atom
N_CANDIDATES = 4

#: the SAEs to browse: one SAE, a dict name -> SAE or SAE folder, an SAE folder, a folder of
#: SAE folders, or a list of folders
SAEs = SAE | Mapping[str, SAE | str | Path] | str | Path | Iterable[str | Path]


@dataclass
class BrowseSite:
    """A built concept browser.

    Attributes:
        root: the site's folder (open ``root / "index.html"``).
        saes: each SAE's name and the folder of its browser (``folder / "index.html"``).
        n_images: images streamed.
        url: ``http://127.0.0.1:PORT/`` while `probe_sae.browser.serve` serves it, else ``None``.
    """

    root: Path
    saes: dict[str, Path]
    n_images: int
    url: str | None = None
    server: Any = field(default=None, repr=False)

    @property
    def index(self) -> Path:
        """The start page: the list of SAEs, or the browser itself for a single SAE."""
        if len(self.saes) == 1:
            return next(iter(self.saes.values())) / "index.html"
        return self.root / "index.html"

    def _repr_html_(self) -> str:
        """Inline in Jupyter: the served site in an iframe, or a link to the file."""
        if self.url is not None:
            rel = self.index.relative_to(self.root).as_posix()
            src = html.escape(self.url + rel)
            return (f'<iframe src="{src}" width="100%" height="720" style="border:1px solid #ccc">'
                    f'</iframe><p><a href="{src}" target="_blank">open {src}</a></p>')  # fmt: skip
        uri = html.escape(self.index.resolve().as_uri())
        return (f'<p>Concept browser written to <a href="{uri}" target="_blank">{uri}</a> '
                f"(pass <code>serve=True</code> to show it inline).</p>")  # fmt: skip


# ----------------------------------------------------------------------------- inputs
def _sae_entries(saes: SAEs) -> dict[str, SAE]:
    """Name -> SAE from one SAE, a dict, an SAE folder, a folder of them, or a list of folders."""
    if isinstance(saes, SAE):
        return {saes.family: saes}
    if isinstance(saes, Mapping):
        out = {}
        for name, sae in saes.items():
            if not isinstance(sae, (SAE, str, Path)):
                raise TypeError(
                    f"saes[{name!r}] is a {type(sae).__name__}; give SAEs or SAE folders."
                )
            out[str(name)] = sae if isinstance(sae, SAE) else load_sae(sae)
        return out
    if isinstance(saes, (str, Path)):
        path = Path(saes)
        if (path / CONFIG_NAME).is_file():
            return {path.name: load_sae(path)}
        subs = (
            sorted(p for p in path.iterdir() if (p / CONFIG_NAME).is_file())
            if path.is_dir()
            else []
        )
        if not subs:
            raise ValueError(
                f"{path} holds no saved SAE: give a folder written by sae.save_pretrained or "
                f"TrainResult.save (with config.json + model.safetensors), or a folder of them."
            )
        return {p.name: load_sae(p) for p in subs}
    if isinstance(saes, Iterable):
        out = {}
        for item in saes:
            out.update(_sae_entries(item))
        return out
    raise TypeError(
        f"saes must be an SAE, a dict name -> SAE, or SAE folders; got {type(saes).__name__}."
    )


def _model_for(saes: Mapping[str, SAE], model: VisionModel | None) -> VisionModel:
    """``model``, or the one the SAEs record (``load_model(provenance["model"], seed=...)``)."""
    if model is not None:
        return model
    specs = {sae.provenance.get("model") for sae in saes.values()}
    if None in specs or len(specs) != 1:
        raise ValueError(
            f"the SAEs record the models {sorted(map(str, specs))}; browse SAEs of one model at a "
            f"time and pass model=probe_sae.load_model(SPEC) (or a wrapped module) when none is "
            f"recorded."
        )
    from probe_sae.models import load_model

    seeds = {sae.provenance.get("seed") for sae in saes.values()} - {None}
    return load_model(specs.pop(), seed=int(seeds.pop()) if seeds else 0)


def _layer_for(model: VisionModel, name: str, sae: SAE, layer: str | int | None) -> str:
    found = layer if layer is not None else sae.provenance.get("layer")
    if found is None:
        raise ValueError(
            f"SAE {name!r} does not record its layer (sae.provenance has no 'layer'); pass "
            f"layer= (model.layers() lists them)."
        )
    return model.resolve(found)


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.") or "sae"


# ----------------------------------------------------------------------------- per SAE state
class _SAEState:
    """One SAE's running statistics, its per-image chunk buffer and (archetypal) candidates."""

    def __init__(
        self, name: str, sae: SAE, model: VisionModel, layer: str, size: tuple[int, int], top_k: int
    ) -> None:
        from probe_sae.interventions.maps import patch_grid
        from probe_sae.interventions.splice import check_width

        check_width(model, layer, sae)
        self.name, self.sae, self.layer = name, sae, layer
        self.grid = patch_grid(model, layer, size)
        site = model.site(layer)
        n_tokens = site.n_tokens if site.kind == "tokens" else self.grid.grid[0] * self.grid.grid[1]
        layout = model.layout.for_image_size(*size) if model.layout is not None else None
        positions = torch.arange(n_tokens)
        if layout is not None and site.kind == "tokens" and n_tokens == layout.n_tokens:
            kinds = kind_masks(
                positions, layout.n_prefix, layout.cls_index, layout.register_indices
            )
        else:  # a convolutional map or a layer without a known layout: every token is a patch
            kinds = torch.zeros(3, n_tokens, dtype=torch.bool)
            kinds[2, self.grid.patch_index] = True
        self.kinds = kinds
        self.stats = ConceptStats(
            sae.n_concepts, self.grid.patch_index.numel(), kinds, self.grid.patch_index, top_k
        )
        self.images: list[dict[str, Any]] = []
        self.labels: PromptScores | None = None
        self.candidates = _CandidateTokens(sae) if _is_archetypal(sae) else None

    def encode(self, acts: Tensor, n_images: int, options: dict[str, Any]) -> Tensor:
        param = next(self.sae.parameters())
        codes = self.sae.encode(acts.to(device=param.device, dtype=param.dtype), **options)
        return codes.view(n_images, -1, self.sae.n_concepts)


def _is_archetypal(sae: SAE) -> bool:
    return hasattr(sae.decoder, "candidates") and hasattr(sae.decoder, "weights")


class _CandidateTokens:
    """For an archetypal SAE: each atom's heaviest candidate points and, over the stream, the
    token (image, position) nearest to each of them in the SAE's normalised space."""

    def __init__(self, sae: SAE) -> None:
        weights = sae.decoder.weights.detach().float().cpu()  # (C, K), rows on the simplex
        n = min(N_CANDIDATES, weights.shape[1])
        self.weight, self.index = weights.topk(n, dim=1)
        self.used = self.index.unique()
        self.points = sae.decoder.candidates.detach().float().cpu()[self.used]
        self.best = torch.full((self.used.numel(),), float("inf"))
        self.image = torch.full((self.used.numel(),), -1, dtype=torch.long)
        self.token = torch.full((self.used.numel(),), -1, dtype=torch.long)

    @torch.no_grad()
    def update(self, sae: SAE, acts: Tensor, positions_B: Tensor) -> None:
        x = sae.normalize(acts.float().to(sae.input_mean.device)).cpu()
        dist = torch.cdist(self.points, x)  # (U, B·T)
        best, at = dist.min(dim=1)
        better = best < self.best
        per_image = x.shape[0] // positions_B.numel()
        self.best = torch.where(better, best, self.best)
        self.image = torch.where(better, positions_B[at // per_image], self.image)
        self.token = torch.where(better, at % per_image, self.token)

    def rows(self, concept: int) -> list[list[float]]:
        """[[candidate, weight, image, token, distance], ...] of ``concept``'s heaviest candidates."""
        out = []
        for w, cand in zip(
            self.weight[concept].tolist(), self.index[concept].tolist(), strict=True
        ):
            u = int(torch.searchsorted(self.used, torch.tensor(cand)))
            out.append(
                [cand, _r(w), int(self.image[u]), int(self.token[u]), _r(float(self.best[u]))]
            )
        return out


# ----------------------------------------------------------------------------- writing
def _r(value: float) -> float:
    """A float with 4 significant digits (compact JSON)."""
    return float(f"{value:.4g}") if np.isfinite(value) else 0.0


def _rs(values: Tensor | Sequence[float]) -> list[float]:
    return [_r(v) for v in (values.tolist() if isinstance(values, Tensor) else values)]


def _b64(array: Tensor) -> str:
    return base64.b64encode(array.contiguous().numpy().tobytes()).decode("ascii")


def _write_js(path: Path, call: str, *args: Any) -> None:
    body = ",".join(json.dumps(a, separators=(",", ":")) for a in args)
    path.write_text(f"probe.{call}({body});\n", encoding="utf-8")


class _Sheets:
    """Thumbnails as JPEG sprite sheets of SHEET × SHEET images, written as they fill."""

    def __init__(self, folder: Path, size: tuple[int, int]) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.size = size  # (w, h) of a thumbnail
        self.sheet: Any = None
        self.number = -1
        self.filled = 0

    def add(self, index: int, rgb_HW3: np.ndarray | None) -> None:
        from PIL import Image

        number, local = divmod(index, CHUNK)
        if number != self.number:
            self.flush()
            self.number, self.filled = number, 0
            w, h = self.size
            self.sheet = Image.new("RGB", (w * SHEET, h * SHEET), (128, 128, 128))
        if rgb_HW3 is not None:
            tile = Image.fromarray((np.clip(rgb_HW3, 0, 1) * 255).round().astype(np.uint8))
            if tile.size != self.size:
                tile = tile.resize(self.size, resample=Image.Resampling.BILINEAR)
            row, col = divmod(local, SHEET)
            self.sheet.paste(tile, (col * self.size[0], row * self.size[1]))
        self.filled = local + 1

    def flush(self) -> None:
        if self.sheet is None:
            return
        rows = -(-self.filled // SHEET)
        sheet = self.sheet.crop((0, 0, self.sheet.width, rows * self.size[1]))
        sheet.save(self.folder / f"t{self.number:05d}.jpg", quality=85, optimize=True)
        self.sheet = None


def _flush_images(state: _SAEState, folder: Path, names: Mapping[int, str], upto: int) -> None:
    """Write the per-image chunks of the buffered images before position ``upto``."""
    done = [r for r in state.images if r["i"] < upto]
    state.images = [r for r in state.images if r["i"] >= upto]
    chunks: dict[int, list[dict[str, Any]]] = {}
    for r in done:
        chunks.setdefault(r["i"] // CHUNK, []).append({**r, "name": names.get(r["i"], "")})
    for number, rows in chunks.items():
        payload = {"first": number * CHUNK, "images": rows}
        _write_js(folder / f"i{number:05d}.js", "chunk", "i", number, payload)


def _copy_assets(root: Path) -> None:
    target = root / "assets"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("app.js", "style.css"):
        data = resources.files("probe_sae.browser").joinpath("assets", name).read_bytes()
        (target / name).write_bytes(data)


def _page(title: str, prefix: str) -> str:
    template = (
        resources.files("probe_sae.browser").joinpath("assets", "index.html").read_text("utf-8")
    )
    return template.replace("{{title}}", html.escape(title)).replace("{{root}}", prefix)


def _hub(
    root: Path, states: Sequence[_SAEState], folders: Mapping[str, Path], n_images: int
) -> None:
    rows = "".join(
        f'<tr><td><a href="{html.escape(folders[s.name].name)}/index.html">{html.escape(s.name)}</a></td>'
        f"<td>{html.escape(s.sae.label)}</td><td>{s.sae.n_concepts}</td><td>{html.escape(s.layer)}</td></tr>"
        for s in states
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        '<title>probe_sae concept browser</title><link rel="stylesheet" href="assets/style.css"></head>'
        f'<body><main id="hub"><h1>probe_sae concept browser</h1><p class="note">{n_images} images.</p>'
        f"<table><tr><th>SAE</th><th>family</th><th>concepts</th><th>layer</th></tr>{rows}</table>"
        "</main></body></html>\n"
    )
    (root / "index.html").write_text(page, encoding="utf-8")


# ----------------------------------------------------------------------------- the build
@torch.no_grad()
def build_site(
    saes: SAEs,
    images: Images,
    out: str | Path,
    *,
    model: VisionModel | None = None,
    layer: str | int | None = None,
    top_k: int = 8,
    image_concepts: int = 8,
    vocabulary: Sequence[str] | str | Path | None = None,
    labels: bool = True,
    max_images: int | None = None,
    batch_size: int = 16,
    thumbnail: int = 96,
    encode_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> BrowseSite:
    """Build a static concept browser for ``saes`` over ``images`` in the folder ``out``.

    Streams the images once (see the module docstring for what is kept and written).

    Args:
        saes: one SAE, a dict name → SAE (or SAE folder), an SAE folder, a folder of SAE
            folders (what `TrainResult.save` writes), or a list of folders.
        images: a (N, C, H, W) tensor, an image folder, a Dataset or PIL images.
        model: the model for every SAE; default ``load_model(sae.provenance["model"])``.
        layer: the layer for every SAE; default ``sae.provenance["layer"]``.
        top_k: top images kept per concept.
        image_concepts: top concepts kept per image (the image view).
        vocabulary: words to label concepts with (a list, or a text file with one a line);
            default `probe_sae.browser.VOCABULARY`. Used only for models with a text tower.
        labels: label concepts with words (CLIP-like models only; costs a full forward per batch).
        max_images: stop after this many images.
        batch_size: images per forward pass.
        thumbnail: the longer side of a thumbnail in pixels (never upsampled).
        encode_options: passed to ``sae.encode`` (e.g. ``{"k": 8}`` for an MP-SAE).

    Returns:
        A `BrowseSite`; open ``site.index`` in a browser (it works from ``file://``).
    """
    from probe_sae.hooks import capture
    from probe_sae.plotting import display_image

    entries = _sae_entries(saes)
    if not entries:
        raise ValueError("no SAE to browse: give an SAE, a dict name -> SAE or SAE folders.")
    if top_k < 1 or image_concepts < 1:
        raise ValueError(
            f"top_k and image_concepts must be positive, got {top_k} and {image_concepts}."
        )
    source = image_source(images)
    vm = _model_for(entries, model)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    size = tuple(vm.input_size)
    states = [
        _SAEState(n, s, vm, _layer_for(vm, n, s, layer), size, top_k) for n, s in entries.items()
    ]
    folders = {s.name: root / _slug(s.name) for s in states}
    for folder in folders.values():
        if (folder / "data").exists():
            shutil.rmtree(folder / "data")
        (folder / "data").mkdir(parents=True)
    if (root / "thumbs").exists():
        shutil.rmtree(root / "thumbs")
    words: list[str] = []
    text_VE = None
    label_note = ""
    if labels and has_text_tower(vm):
        words = (list(VOCABULARY) if vocabulary is None else
                 read_vocabulary(vocabulary) if isinstance(vocabulary, (str, Path)) else list(vocabulary))  # fmt: skip
        text_VE = text_embeddings(vm, words)
        for s in states:
            s.labels = PromptScores(len(words))
    elif labels:
        label_note = f"{vm.name} has no text tower: concepts are not labelled with words."
    scale = min(1.0, thumbnail / max(size))
    thumb = (max(1, round(size[1] * scale)), max(1, round(size[0] * scale)))  # (w, h)
    sheets = _Sheets(root / "thumbs", thumb)
    names: dict[int, str] = {}
    layers = sorted({s.layer for s in states})
    total = source.length if max_images is None else min(max_images, source.length or max_images)
    bar = tqdm(total=total, desc="browse", unit="img", disable=not progress)
    seen, start = 0, 0
    try:
        while max_images is None or seen < max_images:
            count = batch_size if max_images is None else min(batch_size, max_images - seen)
            got = source.read(start, count)
            if not got:
                break
            keep = [i for i, im in enumerate(got) if im is not None]
            positions = [start + i for i in keep]
            for i, im in enumerate(got):
                if im is None:
                    sheets.add(start + i, None)
            if keep:
                # raw images (PIL, uint8 tensors) through the model's preprocessing; float
                # tensors are taken as preprocessed pixels
                items = [model_input(got[i], start + i) for i in keep]
                pixels = vm.to_pixels(to_batch(items, vm.preprocess))
                shown = (pixels.shape[-2], pixels.shape[-1])
                for pos, item in zip(positions, items, strict=True):
                    sheets.add(pos, display_image(item, shown))
                    names[pos] = _short(source, pos)
                captured = capture(vm, pixels, layers, tokens="all")
                cos_BV = image_text_cosines(vm, pixels, text_VE) if text_VE is not None else None
                where = torch.tensor(positions, dtype=torch.long)
                for s in states:
                    acts = captured[s.layer].acts
                    codes = s.encode(acts, len(keep), encode_options or {})
                    score = s.stats.update(codes, where)
                    concepts, scores, maps = s.stats.image_tops(score, image_concepts)
                    for j, pos in enumerate(positions):
                        ok = scores[j] > 0
                        s.images.append({"i": pos, "c": concepts[j][ok].tolist(),
                                         "s": _rs(scores[j][ok]), "m": _b64(maps[j][ok])})  # fmt: skip
                    if s.labels is not None and cos_BV is not None:
                        s.labels.add(where, cos_BV, s.stats.top_index)
                    if s.candidates is not None:
                        s.candidates.update(s.sae, acts, where)
            seen += len(keep)
            bar.update(len(keep))
            start += len(got)
            complete = start // CHUNK * CHUNK  # images before this are in finished chunks
            for s in states:
                _flush_images(s, folders[s.name] / "data", names, complete)
            names = {i: n for i, n in names.items() if i >= complete}
            if len(got) < count:
                break
    finally:
        bar.close()
    sheets.flush()
    if seen == 0:
        raise ValueError("no readable images: give a (N, C, H, W) tensor, a folder or PIL images.")
    for s in states:
        _flush_images(s, folders[s.name] / "data", names, start + CHUNK)
    _copy_assets(root)
    for s in states:
        _finish(s, folders[s.name], vm, seen, start, thumb, words, label_note)
    _hub(root, states, folders, seen)
    return BrowseSite(root=root, saes=dict(folders), n_images=seen)


def _short(source: ImageSource, index: int) -> str:
    namer = getattr(source, "name", None)
    name = str(namer(index)) if callable(namer) else ""
    if name == f"image {index}":  # the default of sources without names
        return ""
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or name


def _finish(
    s: _SAEState, folder: Path, vm: VisionModel, n_images: int, n_read: int,
    thumb: tuple[int, int], words: list[str], label_note: str,
) -> None:  # fmt: skip
    """Write the SAE's index, concept chunks and page."""
    stats = s.stats
    figures = stats.finish()
    freq = figures["frequency"]
    neighbours, cosines = nearest_concepts(s.sae.dictionary, N_NEIGHBOURS)
    concept_labels: list[list[tuple[str, float]]] = []
    if s.labels is not None:
        concept_labels = top_labels(s.labels.concept_scores(stats.top_index), words)
    data = folder / "data"
    has = [bool(s.kinds[j].any()) for j in range(3)]
    meta = {
        "name": s.name, "family": s.sae.label, "n_concepts": s.sae.n_concepts,
        "d_model": s.sae.d_model, "model": s.sae.provenance.get("model") or vm.name,
        "layer": s.layer, "tokens": str(s.sae.provenance.get("tokens", "all")),
        "n_images": n_images, "n_read": n_read, "grid": list(s.grid.grid), "k": stats.k,
        "thumb": list(thumb), "sheet": SHEET, "chunk": CHUNK, "n_tokens": stats.n_tokens,
        "hist_log10": [-3, 3, HIST_EDGES.numel() - 1], "kinds": [k for k, h in zip(TOKEN_KINDS, has, strict=True) if h],
        "token_positions": {"n_prefix": int(s.kinds[:2].any(dim=0).sum()), "n_tokens": int(s.kinds.shape[1])},
        "dense_threshold": 1e-2, "labels_note": label_note, "vocabulary": len(words),
        "archetypal": s.candidates is not None,
    }  # fmt: skip
    columns = {
        "freq": _rs(freq), "img_freq": _rs(figures["image_frequency"]), "max": _rs(figures["max"]),
        "mean": _rs(figures["mean"]),
        **{k: _rs(figures["by_kind"][j]) for j, k in enumerate(TOKEN_KINDS) if has[j]},
    }  # fmt: skip
    label_column = (
        [" · ".join(w for w, _ in row) for row in concept_labels] if concept_labels else None
    )
    _write_js(data / "index.js", "index", {"meta": meta, "cols": columns, "labels": label_column})
    for first in range(0, s.sae.n_concepts, CHUNK):
        last = min(first + CHUNK, s.sae.n_concepts)
        rows = []
        for c in range(first, last):
            valid = stats.top_index[c] >= 0
            hist = stats.hist[c]
            nz = hist.nonzero()
            lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.numel() else (0, 0)
            row = {
                "top": stats.top_index[c][valid].tolist(),
                "score": _rs(stats.top_values[c][valid]),
                "maps": _b64(stats.top_maps[c][valid]),
                "hist": [lo, *hist[lo:hi].tolist()],
                "nn": neighbours[c].tolist(), "nncos": _rs(cosines[c]),
            }  # fmt: skip
            if concept_labels:
                row["labels"] = [[w, _r(v)] for w, v in concept_labels[c]]
            if s.candidates is not None:
                row["arch"] = s.candidates.rows(c)
            rows.append(row)
        _write_js(
            data / f"c{first // CHUNK:05d}.js",
            "chunk",
            "c",
            first // CHUNK,
            {"first": first, "concepts": rows},
        )
    title = f"{s.name}: {s.sae.label}, {s.sae.n_concepts} concepts · {meta['model']} · {s.layer}"
    (folder / "index.html").write_text(_page(title, "../"), encoding="utf-8")
