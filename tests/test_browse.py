"""probe_sae.browser: the concept browser's data equal what the library computes, and the built
site works in a real browser (Debian's chromium driven by selenium through chromedriver, from
file://, with no console error and no request leaving the machine).

Small chunks (32 concepts and images per file) so that several concept chunks, image chunks and
thumbnail sheets are written and read.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from probe_sae import load_model, train_sae
from probe_sae.browser import build as build_module
from probe_sae.browser import build_site, nearest_concepts, serve
from probe_sae.browser.labels import PROMPT
from probe_sae.browser.serve import url_of
from probe_sae.browser.stats import HIST_EDGES
from probe_sae.hooks import capture
from probe_sae.organism.world import KIND_NAMES, generate
from probe_sae.plotting import top_activating_images

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
N_IMAGES = 80
CHUNK = 32
LAYER = "blocks.2"


def read_js(path: Path) -> list:
    """The arguments of the ``probe.f(...)`` call a data file makes."""
    text = path.read_text()
    head, _, body = text.partition("(")
    assert head.startswith("probe.")
    return json.loads("[" + body.rstrip().removesuffix(");") + "]")


def concept_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted((folder / "data").glob("c*.js")):
        rows += read_js(path)[2]["concepts"]
    return rows


def image_rows(folder: Path) -> dict[int, dict]:
    out = {}
    for path in sorted((folder / "data").glob("i0*.js")):
        out.update({r["i"]: r for r in read_js(path)[2]["images"]})
    return out


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    model = load_model("organism")
    images = generate(N_IMAGES, seed=1).images
    return model, images


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    model, _ = world
    warnings.simplefilter("ignore")  # a short run, on purpose (ShortRunWarning)
    result = train_sae(
        model, LAYER, generate(256, seed=0).images, sae=["topk", "rasae"], n_concepts=96, k=8,
        batch_size=512, epochs=1, progress=False,
    )  # fmt: skip
    return result.save(tmp_path_factory.mktemp("saes"))


@pytest.fixture(scope="module")
def site(world, trained, tmp_path_factory):
    _, images = world
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build_module, "CHUNK", CHUNK)
        return build_site(
            [trained["topk"], trained["rasae"]], images, tmp_path_factory.mktemp("site"),
            batch_size=12, progress=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def codes(world, trained):
    """Every token's codes of every image, for direct computations: (N, T, C) per SAE."""
    from probe_sae.saes import load_sae

    model, images = world
    acts = capture(model, images, LAYER)[LAYER]
    out = {}
    for name, folder in trained.items():
        sae = load_sae(folder)
        out[name] = (sae, sae.encode(acts.acts).view(N_IMAGES, acts.tokens_per_image, -1), acts)
    return out


def test_site_files(site):
    assert (site.root / "index.html").is_file() and (site.root / "assets" / "app.js").is_file()
    assert set(site.saes) == {"topk", "rasae"}
    folder = site.saes["topk"]
    assert sorted(p.name for p in (folder / "data").glob("c*.js")) == [f"c0000{i}.js" for i in range(3)]
    assert len(list((folder / "data").glob("i0*.js"))) == 3 and len(list((site.root / "thumbs").glob("*.jpg"))) == 3
    meta = read_js(folder / "data" / "index.js")[0]["meta"]
    assert meta["n_images"] == N_IMAGES and meta["grid"] == [8, 8] and meta["chunk"] == CHUNK
    assert meta["kinds"] == ["cls", "register", "patch"] and meta["labels_note"]  # no text tower
    text = "".join(p.read_text() for p in site.root.rglob("*") if p.suffix in (".html", ".js", ".css"))
    assert "http://" not in text and "https://" not in text and "fetch(" not in text


def test_top_images_are_the_ones_the_library_computes(site, world, codes):
    model, images = world
    sae = codes["topk"][0]
    top = top_activating_images(model, LAYER, sae, images, n=8, progress=False)
    rows = concept_rows(site.saes["topk"])
    assert len(rows) == sae.n_concepts
    for c, row in enumerate(rows):
        valid = top.indices[c] >= 0
        want_v, want_i = top.values[c][valid], top.indices[c][valid]
        assert torch.allclose(torch.tensor(row["score"]), want_v, rtol=1e-3, atol=1e-4), c
        distinct = torch.ones_like(want_v, dtype=torch.bool)  # ties may come in either order
        distinct[1:] &= (want_v[1:] - want_v[:-1]).abs() > 1e-4
        distinct[:-1] &= (want_v[1:] - want_v[:-1]).abs() > 1e-4
        assert torch.equal(torch.tensor(row["top"])[distinct], want_i[distinct]), c
    # the stored maps are the concept's patch codes over the top images, relative to the score
    import base64

    c = int(top.rank("max", 1)[0])
    row = rows[c]
    maps = torch.frombuffer(bytearray(base64.b64decode(row["maps"])), dtype=torch.uint8)
    grid = codes["topk"][1][row["top"][0], 5:, c]
    assert torch.allclose(maps[:64].float() / 255, grid / grid.max(), atol=1 / 255 + 1e-4)


def test_stats_equal_a_direct_computation(site, codes):
    sae, z_NTC, _ = codes["topk"]
    index = read_js(site.saes["topk"] / "data" / "index.js")[0]
    cols = index["cols"]
    fires = z_NTC != 0
    rel = {"rtol": 2e-3, "atol": 1e-6}
    assert torch.allclose(torch.tensor(cols["freq"]).double(), fires.double().mean(dim=(0, 1)), **rel)
    assert torch.allclose(torch.tensor(cols["cls"]).double(), fires[:, 0].double().mean(0), **rel)
    assert torch.allclose(torch.tensor(cols["register"]).double(), fires[:, 1:5].double().mean(dim=(0, 1)), **rel)
    assert torch.allclose(torch.tensor(cols["patch"]).double(), fires[:, 5:].double().mean(dim=(0, 1)), **rel)
    assert torch.allclose(torch.tensor(cols["img_freq"]).double(), fires[:, 5:].any(1).double().mean(0), **rel)
    assert torch.allclose(torch.tensor(cols["max"]), z_NTC.amax(dim=(0, 1)), rtol=2e-3, atol=1e-4)
    mean = z_NTC.sum(dim=(0, 1)) / fires.sum(dim=(0, 1)).clamp_min(1)
    assert torch.allclose(torch.tensor(cols["mean"]), mean, rtol=2e-3, atol=1e-4)
    rows = concept_rows(site.saes["topk"])
    for c in (0, 17, 95):
        start, *counts = rows[c]["hist"]
        values = z_NTC[..., c][fires[..., c]].double()
        want = torch.histc(torch.bucketize(values, HIST_EDGES).double() - 1, bins=48, min=0, max=47)
        assert sum(counts) == int(fires[..., c].sum())
        assert counts == want[start : start + len(counts)].long().tolist()
    # nearest concepts: a brute-force cosine matrix
    unit = F.normalize(sae.dictionary.detach(), dim=1)
    cos = unit @ unit.T
    cos.fill_diagonal_(-2)
    want_cos, _ = cos.topk(8, dim=1)
    for c in (0, 50, 95):
        assert torch.allclose(torch.tensor(rows[c]["nncos"]), want_cos[c], atol=1e-3)
        assert torch.allclose(cos[c, rows[c]["nn"]], want_cos[c], atol=1e-5)
    _, got_c = nearest_concepts(sae.dictionary, 8, block=7)  # blockwise = whole
    assert torch.allclose(got_c, want_cos, atol=1e-5)
    # per image: its top concepts by max patch activation
    images = image_rows(site.saes["topk"])
    assert sorted(images) == list(range(N_IMAGES))
    score_NC = z_NTC[:, 5:].amax(dim=1)
    for i in (0, 33, 79):
        want_s, want_c = score_NC[i].topk(8)
        n = len(images[i]["c"])
        assert torch.allclose(torch.tensor(images[i]["s"]), want_s[:n], rtol=1e-3, atol=1e-4)
        assert set(images[i]["c"][:4]) == set(want_c[:4].tolist())


def test_archetypal_candidates_and_their_nearest_tokens(site, codes):
    sae, _, acts = codes["rasae"]
    rows = concept_rows(site.saes["rasae"])
    weights = sae.decoder.weights.detach()
    points = sae.normalize(acts.acts)
    for c in (0, 40):
        arch = rows[c]["arch"]
        want_w, want_k = weights[c].topk(4)
        assert [a[0] for a in arch] == want_k.tolist()
        assert torch.allclose(torch.tensor([a[1] for a in arch]), want_w, atol=1e-3)
        for cand, _, image, token, dist in arch:
            d = (points - sae.decoder.candidates[cand]).norm(dim=1)
            best = int(d.argmin())
            assert (image, token) == (best // acts.tokens_per_image, best % acts.tokens_per_image)
            assert dist == pytest.approx(float(d.min()), rel=1e-3, abs=1e-4)
    assert "arch" not in concept_rows(site.saes["topk"])[0]


class _Words:
    """A stand-in text tower for the organism: a prompt embeds as the one-hot of the object it
    names, so cos(image, word) is the image's normalised logit for that object."""

    logit_scale = torch.tensor(1.0)
    logit_bias = None

    def encode(self, prompts):
        return torch.stack([F.one_hot(torch.tensor(next(i for i, k in enumerate(KIND_NAMES) if k in p)), 16).float() for p in prompts])


def test_text_labels_follow_the_documented_formula(world, trained, tmp_path):
    model, images = world
    model.text = _Words()
    try:
        site = build_site(trained["topk"], images, tmp_path, model=model, vocabulary=list(KIND_NAMES), progress=False)
        assert PROMPT.format("red_disk") == "a photo of a red_disk."
        cos_NV = F.normalize(model(images).float(), dim=1)
    finally:
        model.text = None
    rows = concept_rows(site.saes["topk"])
    index = read_js(site.saes["topk"] / "data" / "index.js")[0]
    assert index["meta"]["vocabulary"] == 16 and not index["meta"]["labels_note"]
    for c in (0, 30, 60):
        top = torch.tensor(rows[c]["top"])
        score = cos_NV[top].mean(0) - cos_NV.mean(0)
        want = score.topk(3)
        assert [w for w, _ in rows[c]["labels"]] == [KIND_NAMES[j] for j in want.indices]
        assert torch.allclose(torch.tensor([v for _, v in rows[c]["labels"]]), want.values, atol=1e-3)
        assert index["labels"][c].startswith(KIND_NAMES[int(want.indices[0])])


def test_errors_name_the_fix(world, tmp_path):
    from probe_sae import build_sae

    model, images = world
    fresh = build_sae("topk", d_model=128, n_concepts=16, k=2)
    with pytest.raises(ValueError, match="pass model="):
        build_site(fresh, images, tmp_path, progress=False)
    with pytest.raises(ValueError, match="pass layer="):
        build_site(fresh, images, tmp_path, model=model, progress=False)
    with pytest.raises(ValueError, match="width"):
        build_site(build_sae("topk", d_model=7, n_concepts=4, k=1), images, tmp_path, model=model, layer=1)
    with pytest.raises(ValueError, match="holds no saved SAE"):
        build_site(tmp_path, images, tmp_path / "out", progress=False)


def test_cli_builds_and_serve_answers_on_loopback(trained, tmp_path, capsys):
    import probe_sae
    from probe_sae.cli import main

    assert main(["browse", str(trained["topk"]), "--images", "synthetic:20:3", "--out", str(tmp_path), "--top-k", "4"]) == 0
    assert "concept browser written to" in capsys.readouterr().out
    meta = read_js(tmp_path / "topk" / "data" / "index.js")[0]["meta"]
    assert meta["n_images"] == 20 and meta["k"] == 4
    assert callable(probe_sae.browse)
    server = serve(tmp_path, 0, block=False)
    try:
        assert url_of(server).startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url_of(server) + "topk/data/index.js", timeout=10) as reply:
            assert reply.status == 200 and reply.read().startswith(b"probe.index(")
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- in a browser
@pytest.fixture(scope="module")
def driver():
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1300,1000", "--disable-background-networking", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # the driver's path given: selenium-manager is never asked to download anything
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield browser
    browser.quit()


def requested(driver) -> list[str]:
    """Every URL the page asked for so far (chromedriver's performance log: Network events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def wait_for(driver, view: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == view
    )


def test_the_site_in_chromium(driver, site, world, codes):
    from selenium.webdriver.common.by import By

    model, images = world
    sae, z_NTC, _ = codes["topk"]
    driver.get(site.index.resolve().as_uri())  # the hub: one link per SAE
    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "a")]
    assert any(h.endswith("topk/index.html") for h in links) and len(links) == 2
    driver.get((site.saes["topk"] / "index.html").resolve().as_uri())
    wait_for(driver, "list")
    assert len(driver.find_elements(By.CSS_SELECTOR, "tr[data-concept]")) == 96
    # sort by frequency: most frequent first
    driver.find_element(By.CSS_SELECTOR, 'th[data-sort="freq"]').click()
    wait_for(driver, "list")
    shown = [int(r.get_attribute("data-concept")) for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-concept]")]
    freq = (z_NTC != 0).double().mean(dim=(0, 1))
    assert freq[shown[0]] == pytest.approx(float(freq.max()), rel=2e-3)
    assert all(freq[a] >= freq[b] - 1e-6 for a, b in itertools.pairwise(shown))
    # search by id, and the dead filter
    box = driver.find_element(By.ID, "search")
    box.send_keys(str(shown[3]))
    driver.implicitly_wait(0)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr[data-concept]")) == 1)
    box.clear()
    box.send_keys(" ")
    WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr[data-concept]")) > 1)
    # open the most frequent concept: its top images are the library's
    driver.find_element(By.CSS_SELECTOR, f'tr[data-concept="{shown[0]}"] a').click()
    wait_for(driver, "concept")
    got = [int(a.get_attribute("data-image")) for a in driver.find_elements(By.CSS_SELECTOR, "#top-images a.tile")]
    top = top_activating_images(model, LAYER, sae, images, [shown[0]], n=8, progress=False)
    want = top.indices[0][top.values[0] > 0].tolist()
    assert sorted(got) == sorted(want) and got[0] == want[0]
    painted = driver.execute_script(
        "var c=document.querySelector('#top-images canvas');"
        "var d=c.getContext('2d').getImageData(0,0,c.width,c.height).data, n=0;"
        "for (var i=3;i<d.length;i+=4) n+=d[i]>0; return n;"
    )
    assert painted > 0  # the heatmap is drawn
    # an image view: its top concepts
    driver.find_element(By.CSS_SELECTOR, "#top-images a.tile").click()
    wait_for(driver, "image")
    concepts = [int(a.get_attribute("data-concept")) for a in driver.find_elements(By.CSS_SELECTOR, "#image-concepts a.tile")]
    score = z_NTC[got[0], 5:].amax(dim=0)
    assert shown[0] in concepts and set(concepts[:3]) == set(score.topk(3).indices.tolist())
    # no console error; nothing requested outside the site's folder
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors
    urls = requested(driver)
    root = site.root.resolve().as_uri()
    assert any(u.endswith("/thumbs/t00000.jpg") for u in urls), urls
    assert any(u.endswith("topk/data/c00000.js") or "topk/data/c0000" in u for u in urls), urls
    assert all(u.startswith(root) or u.startswith("data:") for u in urls), urls


def test_the_report_links_the_browser(world, trained, site, tmp_path):
    from probe_sae.report import write_report

    model, images = world
    out = write_report(
        {"topk": trained["topk"]}, images[:12], tmp_path / "r" / "report.html", model=model,
        n_concepts=1, n_images=2, atlas_concepts=0, progress=False, browser=site.index,
    )  # fmt: skip
    text = out.read_text()
    href = text.split('id="browser-link" href="', 1)[1].split('"', 1)[0]
    assert not href.startswith(("http", "/")) and (out.parent / href).resolve() == site.index.resolve()


def test_a_real_open_clip_text_tower_labels_the_concepts(tmp_path):
    """open_clip ViT-B-32 (its real architecture, random weights): the vocabulary goes through
    the model's own text tower, and each concept's labels follow the documented formula."""
    from probe_sae.saes import build_sae

    model = load_model("open_clip:ViT-B-32")
    images = (torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(
        torch.uint8
    )
    layer = "blocks.10"
    sae = build_sae("topk", model.layer_info(layer).shape[-1], 32, k=4)
    sae.provenance = {"layer": layer}
    words = ["red", "dog", "car", "tree", "sky"]
    site = build_site({"topk": sae}, images, tmp_path, model=model, layer=layer,
                      vocabulary=words, top_k=3, progress=False)  # fmt: skip
    index = read_js(site.saes["topk"] / "data" / "index.js")[0]
    assert index["meta"]["vocabulary"] == len(words) and not index["meta"]["labels_note"]
    pixels = model.preprocess(list(_pil(images)))
    cos_NV = F.normalize(model(pixels).float(), dim=1) @ model.encode_text(
        [PROMPT.format(w) for w in words], normalize=True
    ).float().T
    rows = concept_rows(site.saes["topk"])
    checked = 0
    for row in rows:
        if not row["top"]:
            continue
        top = torch.tensor(row["top"])
        want = (cos_NV[top].mean(0) - cos_NV.mean(0)).topk(3)
        assert [w for w, _ in row["labels"]] == [words[j] for j in want.indices], row
        checked += 1
    assert checked > 0


def _pil(images):
    from PIL import Image

    for image in images:
        yield Image.fromarray(image.permute(1, 2, 0).numpy())
