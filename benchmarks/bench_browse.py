"""The concept browser at scale: build time, site size, first-view load time in chromium.

    python benchmarks/bench_browse.py                                  # 16,384 concepts, 10,000 images
    python benchmarks/bench_browse.py --concepts 4096 --images 2000    # smaller
    python benchmarks/bench_browse.py --screenshots                    # also docs/images/browse/*.png

The organism's ``blocks.2`` (128 wide, 69 tokens: CLS, 4 registers, 8 × 8 patches) with a
**randomly initialised** TopK SAE (seed 0, k = 32; an untrained dictionary: its statistics are
not meaningful, its costs are those of a trained one of the same size) over synthetic collages.
Build: `probe_sae.browser.build_site` end to end (one streaming pass, chunks, thumbnails, nearest
concepts), wall-clock, with its peak resident memory. Load: headless Debian chromium through
selenium and chromedriver, a fresh page from ``file://``; "first view" is the time from navigation
start to the list of concepts drawn (the page records it), median of 5 loads. Screenshots (the
list sorted by frequency, a concept, an image) are written from the organism's demo-sized site
(512 concepts, trained briefly) so that they show something, palette-quantised PNGs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "images" / "browse"


def site_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def driver(width: int = 1280, height: int = 860):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-background-networking"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def wait_for(browser, view: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == view
    )


def first_view_ms(index: Path, repeats: int = 5) -> tuple[float, float]:
    """Median (first list drawn, DOMContentLoaded) in ms after navigation start, fresh pages."""
    first, dom = [], []
    for _ in range(repeats):
        browser = driver()
        try:
            browser.get(index.resolve().as_uri())
            wait_for(browser, "list")
            timing = browser.execute_script(
                "var n = performance.getEntriesByType('navigation')[0];"
                "return [window.probeTiming.firstView, n.domContentLoadedEventEnd];"
            )
            first.append(timing[0])
            dom.append(timing[1])
        finally:
            browser.quit()
    return statistics.median(first), statistics.median(dom)


def interaction_ms(index: Path) -> tuple[float, float]:
    """(sort by frequency, open a concept) in ms, in one page."""
    from selenium.webdriver.common.by import By

    browser = driver()
    try:
        browser.get(index.resolve().as_uri())
        wait_for(browser, "list")
        t0 = time.perf_counter()
        browser.find_element(By.CSS_SELECTOR, 'th[data-sort="freq"]').click()
        wait_for(browser, "list")
        sort = time.perf_counter() - t0
        top = browser.find_element(By.CSS_SELECTOR, "tr[data-concept]").get_attribute("data-concept")
        t0 = time.perf_counter()
        browser.execute_script(f"location.hash = '#/c/{top}'")
        wait_for(browser, "concept")
        concept = time.perf_counter() - t0
        return 1000 * sort, 1000 * concept
    finally:
        browser.quit()


def screenshots(out: Path) -> None:
    """The three main views of a demo-sized site, as small PNGs in ``out``."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    from probe_sae import load_model, train_sae
    from probe_sae.browser import build_site
    from probe_sae.organism.world import generate

    model = load_model("organism")
    result = train_sae(
        model, "blocks.2", generate(2048, seed=0).images, sae=["topk"], n_concepts=512, k=16,
        batch_size=1024, epochs=2, lr=2e-3, progress=False,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        site = build_site({"topk": result.saes["topk"]}, generate(512, seed=10_000).images, tmp,
                          model=model, layer="blocks.2", progress=False)  # fmt: skip
        browser = driver(1100, 760)
        try:
            browser.get(site.index.resolve().as_uri())
            wait_for(browser, "list")
            browser.find_element(By.CSS_SELECTOR, 'th[data-sort="max"]').click()
            wait_for(browser, "list")
            shots = {"list.png": None}
            concept = browser.find_element(By.CSS_SELECTOR, "tr[data-concept]").get_attribute("data-concept")
            browser.save_screenshot(str(out / "list.png"))
            browser.execute_script(f"location.hash = '#/c/{concept}'")
            wait_for(browser, "concept")
            browser.save_screenshot(str(out / "concept.png"))
            image = browser.find_element(By.CSS_SELECTOR, "#top-images a.tile").get_attribute("data-image")
            browser.execute_script(f"location.hash = '#/i/{image}'")
            wait_for(browser, "image")
            browser.save_screenshot(str(out / "image.png"))
            shots.update({"concept.png": None, "image.png": None})
        finally:
            browser.quit()
    for name in shots:
        path = out / name
        small = Image.open(path).convert("RGB").quantize(96, dither=Image.Dither.NONE)
        small.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", type=int, default=16_384)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--screenshots", action="store_true")
    args = parser.parse_args()

    from probe_sae import build_sae, load_model
    from probe_sae.browser import build_site
    from probe_sae.organism.world import generate

    torch.manual_seed(0)
    model = load_model("organism")
    sae = build_sae("topk", d_model=128, n_concepts=args.concepts, k=32)
    images = generate(args.images, seed=1).images
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        site = build_site({"topk": sae}, images, tmp, model=model, layer="blocks.2",
                          batch_size=args.batch_size, progress=True)  # fmt: skip
        build = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size, n_files = site_size(site.root)
        index_kb = (site.saes["topk"] / "data" / "index.js").stat().st_size / 1024
        first, dom = first_view_ms(site.index)
        sort, concept = interaction_ms(site.index)
    rows = [
        ("concepts × images", f"{args.concepts:,} × {args.images:,}"),
        ("build (one pass, wall-clock)", f"{build:.0f} s ({args.images / build:.0f} images/s)"),
        ("peak resident memory (process)", f"{peak_mb:,.0f} MB"),
        ("site size", f"{size / 2**20:.1f} MB in {n_files:,} files"),
        ("first data file (index.js)", f"{index_kb:,.0f} kB"),
        ("first view: list drawn (median of 5)", f"{first:.0f} ms (DOMContentLoaded {dom:.0f} ms)"),
        ("sort all concepts by frequency", f"{sort:.0f} ms"),
        ("open a concept (loads its chunk)", f"{concept:.0f} ms"),
    ]
    table = "| | |\n| --- | ---: |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    print(json.dumps({"build_s": build, "size_bytes": size, "first_view_ms": first}), file=sys.stderr)
    if args.screenshots:
        SHOTS.mkdir(parents=True, exist_ok=True)
        screenshots(SHOTS)
        print(f"screenshots in {SHOTS}")


if __name__ == "__main__":
    main()
