"""probe_sae.report.write_report: a self-contained HTML page, parsed and (if Chromium is there)
rendered headless and looked at.

By hand::

    chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=$(mktemp -d) \\
        --screenshot=report.png --window-size=1280,2000 file:///abs/path/report.html
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from probe_sae import build_sae, load_model, train_sae
from probe_sae.organism.world import generate
from probe_sae.plotting import new_figure
from probe_sae.report import write_report

CHROMIUM = Path("/usr/bin/chromium")


class _Page(HTMLParser):
    """Tags, ids, headings and image sources of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.images: list[dict[str, str]] = []
        self.headings: list[str] = []
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        if tag in ("h2", "h3"):
            self._heading = []

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two SAEs on the organism's blocks.2, saved with their training logs."""
    torch.set_num_threads(1)
    model = load_model("organism")
    result = train_sae(
        model, "blocks.2", generate(160, seed=0).images, sae=["topk", "mp"], n_concepts=32, k=4,
        batch_size=256, epochs=1, log_every=2, progress=False,
    )  # fmt: skip
    folders = result.save(tmp_path_factory.mktemp("saes"))
    return model, result, folders


@pytest.fixture(scope="module")
def report(trained, tmp_path_factory):
    _model, _result, folders = trained
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    fig = new_figure(2, 2)
    fig.add_subplot().plot([0, 1], [1, 0])
    given = {"fvu": 0.123456, "l0": 4.0, "dead_fraction": 0.5, "family": "mp"}
    path = write_report(
        folders["topk"].parent, generate(40, seed=1).images, out, n_concepts=3, n_images=4,
        atlas_concepts=6, reports={"mp": given}, progress=False,
        extra_sections=[("Steering <results>", "<p id='steer-note'>steered</p>"), ("A figure", fig)],
    )  # fmt: skip
    return path, path.read_text(encoding="utf-8")


def test_report_is_one_self_contained_page_with_the_expected_sections(report, trained):
    path, text = report
    assert path.is_file() and path.name == "report.html"
    assert not list(path.parent.glob(".report.html.*"))  # atomic write left no temporary file
    page = _Page()
    page.feed(text)
    # nothing leaves the file: no scripts, stylesheets, remote URLs
    assert "script" not in page.tags and "link" not in page.tags
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"https?:|//[a-z0-9]|url\(|@import", outside, re.I)
    assert all(href.startswith("#") for href in page.hrefs)
    for sec in ("summary", "sae-topk", "sae-mp", "extra-Steering-results", "extra-A-figure"):
        assert sec in page.ids
    assert "steer-note" in page.ids  # trusted extra HTML inserted as is
    assert "Steering &lt;results&gt;" in text  # titles escaped
    for title in ("Configuration", "Metrics", "Training curves", "Top concepts", "Concept atlas"):
        assert page.headings.count(title) == 2, title
    assert "FVU against L0" in page.headings
    # every image an embedded PNG that decodes
    from PIL import Image

    assert len(page.images) >= 2 * 3 + 2
    for img in page.images:
        head, _, data = img["src"].partition(",")
        assert head == "data:image/png;base64"
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "PNG" and im.width > 50 and im.height > 50
    alts = [img["alt"] for img in page.images]
    for name in ("topk", "mp"):
        assert f"top images of {name}" in alts and f"training curves of {name}" in alts
    assert path.stat().st_size < 3_000_000


def test_report_shows_the_metrics_it_computes_or_is_given(report, trained):
    _, text = report
    model, result, _folders = trained
    from probe_sae.hooks import capture
    from probe_sae.metrics import evaluate

    sae = result.saes["topk"]
    got = capture(model, generate(40, seed=1).images, "blocks.2")["blocks.2"]
    want = evaluate(sae, got.acts)  # every token of the 40 images
    topk = text[text.index('id="sae-topk"') :]
    assert f"<th>n tokens</th><td>{40 * 69}</td>" in topk
    assert f"<th>fvu</th><td>{want.fvu:.4g}</td>" in topk
    assert f"<th>l0</th><td>{want.l0:.4g}</td>" in topk
    assert "<th>l0 by token kind: patch</th>" in topk
    assert "<th>layer</th><td>blocks.2</td>" in topk and "<th>model</th><td>organism</td>" in topk
    mp = text[text.index('id="sae-mp"') : text.index('id="sae-topk"')]
    assert "<th>fvu</th><td>0.1235</td>" in mp  # the report passed in, not recomputed
    assert "ranked by <b>mass</b>" in text


def test_report_takes_a_dict_of_saes_and_needs_a_model_and_layer(trained, tmp_path):
    model, _result, _ = trained
    images = generate(12, seed=2).images
    fresh = build_sae("topk", d_model=128, n_concepts=16, k=2)  # no provenance
    with pytest.raises(ValueError, match=r"pass model=probe_sae\.load_model"):
        write_report({"fresh": fresh}, images, tmp_path / "r.html", progress=False)
    with pytest.raises(ValueError, match="pass layer="):
        write_report({"fresh": fresh}, images, tmp_path / "r.html", model=model, progress=False)
    out = write_report(
        {"mine": fresh}, images, tmp_path / "r.html", model=model, layer="blocks.1",
        n_concepts=2, n_images=2, atlas_concepts=0, progress=False,
    )  # fmt: skip
    text = out.read_text()
    assert 'id="sae-mine"' in text and "No training_log.json" in text
    assert "Concept atlas" not in text
    with pytest.raises(ValueError, match="holds no saved SAE"):
        write_report(tmp_path, images, tmp_path / "r2.html", progress=False)
    with pytest.raises(ValueError, match="width"):
        write_report({"x": build_sae("topk", d_model=7, n_concepts=4, k=1)}, images,
                     tmp_path / "r3.html", model=model, layer="blocks.1", progress=False)  # fmt: skip
    with pytest.raises(TypeError, match="cannot read images"):
        write_report({"mine": fresh}, 5, tmp_path / "r4.html", model=model, layer=1)
    assert not (tmp_path / "r2.html").exists() and not (tmp_path / "r3.html").exists()


def test_report_renders_with_heatmaps_in_headless_chromium(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium to run this check)")
    path, _ = report
    shot = tmp_path / "report.png"
    profile = tempfile.mkdtemp()
    try:
        subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
             "--window-size=1280,2000", path.resolve().as_uri()],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    from PIL import Image

    assert shot.is_file(), "chromium wrote no screenshot"
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert rgb.shape == (2000, 1280, 3)
    assert rgb.std() > 20  # not a blank page
    # the embedded figures show: many distinct colours and saturated (heat / object) pixels
    colours = len(np.unique(rgb.reshape(-1, 3)[::7], axis=0))
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert colours > 500 and (saturation > 100).mean() > 0.01


# ----------------------------------------------------------------------------- issue 20, item 5
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def _dump_dom(path: Path) -> str:
    """The page as headless Chromium parses and lays it out."""
    profile = tempfile.mkdtemp()
    try:
        done = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", path.resolve().as_uri()],
            capture_output=True, timeout=120, check=False, text=True,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert "<body" in done.stdout, done.stderr[-2000:]
    return done.stdout


def _text_of(dom: str) -> str:
    """Visible text of a DOM dump (tags dropped, entities kept as Chromium wrote them)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.fixture(scope="module")
def photo_report(trained, tmp_path_factory):
    """A report over a folder of small scikit-image photos."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        pixels = getattr(skdata, name)()
        Image.fromarray(pixels).convert("RGB").resize((48, 48)).save(folder / f"{name}.png")
    model, _result, folders = trained
    out = tmp_path_factory.mktemp("photo_report") / "report.html"
    write_report({"topk": folders["topk"]}, str(folder), out, model=model, n_concepts=3,
                 n_images=3, atlas_concepts=4, progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def organism_report(trained, tmp_path_factory):
    """A report over labelled synthetic collages, with a steering experiment."""
    model, _result, folders = trained
    world = generate(96, seed=3)
    out = tmp_path_factory.mktemp("organism_report") / "report.html"
    steering = {"kind": "red_disc", "concept": 5, "multiples": [0, 1, 2, 4],
                "p_kind": [0.1, 0.3, 0.6, 0.9], "off_target": [0.0, 0.01, 0.02, 0.05],
                "n_images": 40}  # fmt: skip
    write_report({"topk": folders["topk"]}, world.images, out, model=model, n_concepts=4,
                 n_images=3, atlas_concepts=8, rank="max", labels=world.presence,
                 steering=steering, progress=False)  # fmt: skip
    return out, world


def test_photo_report_names_images_by_file_name_in_chromium(photo_report):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium to run this check)")
    text = _text_of(_dump_dom(photo_report))
    shown = [name for name in PHOTOS if f"{name}.png" in text]
    assert len(shown) >= 3, text[:2000]
    assert not re.search(r"#\d+ ·", text)  # no image is labelled by its position
    assert "SAEs topk (32 concepts) on organism · blocks.2" in text  # the title names it all


def test_photo_report_figures_upsample_small_images(photo_report):
    from PIL import Image

    page = _Page()
    page.feed(photo_report.read_text(encoding="utf-8"))
    top = next(img for img in page.images if img["alt"] == "top images of topk")
    data = base64.b64decode(top["src"].partition(",")[2])
    with Image.open(io.BytesIO(data)) as im:
        assert im.width >= 3 * 160  # three tiles of at least 160 px


def test_organism_report_names_concepts_by_ground_truth_in_chromium(organism_report):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium to run this check)")
    from probe_sae.organism import KIND_NAMES

    path, _world = organism_report
    dom = _dump_dom(path)
    text = _text_of(dom)
    assert "Ground truth" in text
    truth = dom[dom.index('class="truth"') :]
    truth = truth[: truth.index("</table>")]
    assert sum(name in truth for name in KIND_NAMES) == len(KIND_NAMES)
    listing = dom[dom.index('id="concepts-topk"') :]
    listing = _text_of(listing[: listing.index("</ul>")])
    named = re.findall(r"concept \d+: (\w+) \(AUC (0\.\d+|1\.00)\)", listing)
    assert named and all(kind in KIND_NAMES and float(auc) >= 0.8 for kind, auc in named)
    assert "P(red_disc) 0× → 0.100" in text  # the steering section says it in words ...
    assert "steering" in [img.get("alt") for img in _images(dom)]  # ... and plots it


def _images(dom: str) -> list[dict[str, str]]:
    page = _Page()
    page.feed(dom)
    return page.images


def test_ground_truth_names_match_the_best_detecting_concept(trained, organism_report):
    """The concept a report names after an object detects it best (demo's AUC agrees)."""
    from probe_sae.demo import auc_per_column, image_codes

    model, result, _ = trained
    path, world = organism_report
    text = path.read_text(encoding="utf-8")
    truth = text[text.index('class="truth"') :]
    first = re.search(r"<th>(\w+)</th><td>concept (\d+) \(AUC ([0-9.]+)\)</td>", truth)
    assert first is not None
    kind, concept, auc = first.group(1), int(first.group(2)), float(first.group(3))
    from probe_sae.organism import KIND_NAMES

    codes = image_codes(model, "blocks.2", result.saes["topk"], world.images)
    want = auc_per_column(codes, world.presence[:, KIND_NAMES.index(kind)])
    assert float(want.max()) == pytest.approx(auc, abs=2e-3)
    assert float(want[concept]) == pytest.approx(auc, abs=2e-3)


def test_report_draws_no_constant_curve(trained):
    """TopK's L0 is constant while training: the report says so instead of drawing it."""
    from probe_sae.plotting import curve_series, plot_training_curves, plotted_series
    from probe_sae.report import _curves

    _model, result, _ = trained
    rows = [r for r in result.metrics if r.get("name") == "topk"]
    drawn = plotted_series(plot_training_curves(rows))
    assert "l0" not in drawn and "fvu" in drawn
    for runs in drawn.values():
        for _xs, ys in runs.values():
            assert max(ys) - min(ys) > 1e-6 * max(abs(v) for v in ys)
    _varying, constant = curve_series(rows)
    assert constant["l0"] == {"topk": 4.0}
    assert "Constant during training (not drawn): l0 = 4" in _curves(rows, "topk", 40)
