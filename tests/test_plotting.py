"""probe_sae.plotting: figures checked for what they draw, on the organism and small tensors."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

matplotlib.use("Agg")

from probe_sae import load_model, train_sae
from probe_sae.interventions import concept_maps
from probe_sae.organism.world import FAMILIES, generate
from probe_sae.plotting import (
    ConceptTiles,
    curve_series,
    display_image,
    draw_top_images,
    new_figure,
    plot_activation_histograms,
    plot_concept_atlas,
    plot_concept_heatmaps,
    plot_fvu_l0,
    plot_maps,
    plot_similarity,
    plot_steering,
    plot_top_images,
    plot_training_curves,
    plotted_series,
    similarity_matrix,
    top_activating_images,
)
from probe_sae.plotting._display import overlay, upscale
from probe_sae.plotting.curves import padded_limits

LAYER = "blocks.2"


@pytest.fixture(scope="module")
def world():
    """The organism, a small TopK SAE trained on its blocks.2 and held-out collages."""
    torch.set_num_threads(1)
    model = load_model("organism")
    result = train_sae(
        model, LAYER, generate(200, seed=0).images, sae="topk", n_concepts=64, k=8,
        batch_size=256, epochs=2, log_every=5, progress=False,
    )  # fmt: skip
    return model, result, generate(64, seed=1)


def _heat(ax) -> np.ndarray:
    layer = ax.images[-1]
    assert layer.get_label() == "heatmap"
    return np.asarray(layer.get_array())


def test_import_probe_sae_leaves_matplotlib_unloaded():
    code = "import sys, probe_sae; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_heatmap_hot_region_lies_on_the_object_the_concept_detects(world):
    model, result, test = world
    sae = result.saes["topk"]
    # the concept whose patch map best correlates with an object mask (kind or colour family)
    masks = test.masks.float()  # (B, 16, H, W)
    families = torch.stack([masks[:, list(k)].amax(dim=1) for k in FAMILIES.values()], dim=1)
    objects = torch.cat([masks, families], dim=1)  # (B, 24, H, W)
    maps = concept_maps(model, LAYER, sae, test.images)  # (B, 64, 8, 8)
    cover = F.adaptive_avg_pool2d(objects, maps.shape[-2:])
    x = maps.transpose(0, 1).flatten(1)
    y = cover.transpose(0, 1).flatten(1)
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    corr = (x @ y.T) / (x.norm(dim=1)[:, None] * y.norm(dim=1)[None] + 1e-9)
    concept, obj = divmod(int(corr.argmax()), corr.shape[1])
    assert corr[concept, obj] > 0.5

    rows = [b for b in range(len(test)) if objects[b, obj].any()][:6]
    fig = plot_concept_heatmaps(model, LAYER, sae, test.images[rows], [concept], max_images=6)
    axes = np.array(fig.axes).reshape(len(rows), 2)
    expected = F.interpolate(maps[rows][:, [concept]], size=(64, 64), mode="bilinear")
    fired = 0
    for r, b in enumerate(rows):
        heat = _heat(axes[r, 1])
        assert heat.shape == (64, 64)
        np.testing.assert_allclose(heat, expected[r, 0].clamp_min(0).numpy(), atol=1e-5)
        # the plain image is drawn in column 0, un-normalised
        np.testing.assert_allclose(
            axes[r, 0].images[0].get_array(), test.images[b].permute(1, 2, 0).numpy(), atol=1e-6
        )
        if heat.max() <= 0:
            continue
        fired += 1
        mask = objects[b, obj].numpy() > 0
        iy, ix = np.unravel_index(np.argmax(heat), heat.shape)
        assert mask[iy, ix], f"hottest pixel of concept {concept} is off the object in image {b}"
        inside = (heat * mask).sum() / heat.sum()
        assert inside > 3 * mask.mean(), (inside, mask.mean())
    assert fired >= len(rows) - 2


def test_top_images_are_the_true_top_by_brute_force(world):
    model, result, test = world
    sae = result.saes["topk"]
    top = top_activating_images(model, LAYER, sae, test.images, n=5, batch_size=10, progress=False)
    codes = concept_maps(model, LAYER, sae, test.images)  # (B, C, h, w)
    score_CB = codes.amax(dim=(2, 3)).T
    best = score_CB.sort(dim=1, descending=True).values[:, :5]
    torch.testing.assert_close(top.values, best)
    # the stored image positions really have those scores
    torch.testing.assert_close(score_CB.gather(1, top.indices), top.values)
    torch.testing.assert_close(top.mass, codes.double().sum(dim=(0, 2, 3)))
    torch.testing.assert_close(top.image_frequency, (score_CB > 0).double().mean(dim=1))
    assert top.n_images == 64 and top.grid == (8, 8)
    ranked = top.rank("mass", 3)
    assert ranked == top.mass.argsort(descending=True)[:3].tolist()
    # a subset of concepts and a cap on images
    few = top_activating_images(
        model, LAYER, sae, test.images, [3, 7], n=2, max_images=20, progress=False
    )
    torch.testing.assert_close(
        few.values, score_CB[[3, 7], :20].sort(dim=1, descending=True).values[:, :2]
    )

    fig = plot_top_images(model, LAYER, sae, test.images, ranked, top=top, n=5)
    axes = np.array(fig.axes).reshape(3, 5)
    for r, c in enumerate(ranked):
        titles = [ax.get_title() for ax in axes[r]]
        assert titles == [
            f"image {int(i)} · {float(v):.2g}"
            for i, v in zip(top.indices[c], top.values[c], strict=True)
        ]
        # the heat drawn over top image j is that concept's map over that image
        j = int(top.indices[c, 0])
        want = F.interpolate(codes[[j]][:, [c]], size=(64, 64), mode="bilinear")[0, 0]
        np.testing.assert_allclose(_heat(axes[r, 0]), want.clamp_min(0).numpy(), atol=1e-5)


def test_concept_atlas_shows_each_concept_over_its_best_image(world):
    model, result, test = world
    sae = result.saes["topk"]
    top = top_activating_images(model, LAYER, sae, test.images, n=1, progress=False)
    fig = plot_concept_atlas(model, LAYER, sae, test.images, top=top, n_concepts=10, columns=4)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == [f"c{c}" for c in top.rank("mass", 10)]
    assert all(_heat(ax).max() > 0 for ax in titled)
    assert len(fig.axes) == 12  # 3 rows × 4 columns, the last two blank


def test_histograms_count_the_nonzero_codes():
    codes = torch.zeros(500, 6)
    codes[:100, 0] = torch.rand(100) + 0.1
    codes[:30, 2] = torch.rand(30) + 0.1
    fig = plot_activation_histograms(codes, [0, 2, 5], bins=10)
    counts = [sum(p.get_height() for p in ax.patches) for ax in fig.axes[:3]]
    assert counts == [100, 30, 0]
    assert fig.axes[0].get_title() == "concept 0 · freq 20.00%"
    assert fig.axes[2].texts[0].get_text() == "never fires"
    default = plot_activation_histograms(codes)  # most frequent first
    assert default.axes[0].get_title().startswith("concept 0")
    with pytest.raises(ValueError, match="flatten"):
        plot_activation_histograms(codes[None])


def test_training_curves_plot_the_logged_values(world, tmp_path):
    _, result, _ = world
    rows = result.metrics
    fig = plot_training_curves(rows, ["fvu", "l0", "dead_fraction", "not_logged"])
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    _, constant = curve_series(rows, ["fvu", "l0", "dead_fraction"])
    assert "l0" in constant and "l0" not in by_title  # TopK's L0 never changes: not drawn
    assert sorted(set(by_title) | set(constant)) == ["dead_fraction", "fvu", "l0"]
    assert fig.constant == constant
    for key, ax in by_title.items():
        (line,) = ax.get_lines()
        assert line.get_label() == "topk"
        np.testing.assert_allclose(line.get_xdata(), [r["tokens"] for r in rows])
        np.testing.assert_allclose(line.get_ydata(), [r[key] for r in rows])
    folder = result.save(tmp_path)["topk"]
    again = plot_training_curves(folder, ["loss"], x="step")
    np.testing.assert_allclose(again.axes[0].get_lines()[0].get_xdata(), [r["step"] for r in rows])
    with pytest.raises(FileNotFoundError, match=r"TrainResult\.save"):
        plot_training_curves(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="none of"):
        plot_training_curves(rows, ["nope"])


def test_curves_draw_markers_for_few_points_and_skip_constant_series():
    rows = [{"name": "a", "tokens": 10, "fvu": 0.5, "l0": 16.0, "lr": 1e-3},
            {"name": "a", "tokens": 20, "fvu": 0.3, "l0": 16.0, "lr": 1e-3},
            {"name": "b", "tokens": 10, "fvu": 0.4, "l0": 15.97, "lr": 1e-3},
            {"name": "b", "tokens": 20, "fvu": 0.35, "l0": 16.0, "lr": 1e-3}]  # fmt: skip
    fig = plot_training_curves(rows)
    drawn = plotted_series(fig)
    assert set(drawn) == {"fvu", "l0"} and set(drawn["l0"]) == {"b"}  # a's L0 is constant
    assert drawn["fvu"]["a"] == ([10.0, 20.0], [0.5, 0.3])
    assert fig.constant == {"l0": {"a": 16.0}, "lr": {"a": 1e-3, "b": 1e-3}}
    for ax in fig.axes:
        for line in ax.get_lines():
            assert line.get_linestyle() == "None" and line.get_marker() == "o"  # 2 points
    l0_axes = next(ax for ax in fig.axes if ax.get_title() == "l0")
    lo, hi = l0_axes.get_ylim()
    assert hi - lo >= 1.5  # 15.97 .. 16.00 is not stretched over the axes
    many = [{"name": "a", "tokens": t, "fvu": 1 / (t + 1)} for t in range(10)]
    (line,) = plot_training_curves(many, ["fvu"]).axes[0].get_lines()
    assert line.get_linestyle() == "-"
    flat = plot_training_curves([{"tokens": 1, "l0": 4.0}, {"tokens": 2, "l0": 4.0}], ["l0"])
    assert plotted_series(flat) == {} and "no logged quantity changes" in flat.axes[0].texts[0].get_text()


def test_padded_limits_only_for_nearly_constant_values():
    assert padded_limits([15.97, 16.0]) == pytest.approx((15.18575, 16.78425))
    assert padded_limits([0.0, 0.0]) == pytest.approx((-0.05, 0.05))
    assert padded_limits([1.0, 2.0]) is None and padded_limits([]) is None


def test_fvu_l0_front_pads_a_nearly_constant_l0():
    fig = plot_fvu_l0({"a": {"fvu": 0.2, "l0": 15.97, "family": "topk"},
                       "b": {"fvu": 0.25, "l0": 16.0, "family": "mp"}})  # fmt: skip
    lo, hi = fig.axes[0].get_xlim()
    assert hi - lo >= 1.5


def test_steering_dose_response():
    fig = plot_steering([0, 1, 2], [0.1, 0.5, 0.8], [0.0, 0.01, 0.02], target_label="P(x)")
    drawn = plotted_series(fig)[""]
    assert drawn["P(x)"] == ([0.0, 1.0, 2.0], [0.1, 0.5, 0.8])
    assert len(drawn) == 2
    with pytest.raises(ValueError, match="one target value per strength"):
        plot_steering([0, 1], [0.1])


def test_small_images_are_upsampled_with_a_contour():
    image = np.random.default_rng(0).random((32, 32, 3))
    heat = np.zeros((32, 32))
    heat[8:16, 8:16] = 1.0
    big, big_heat = upscale(image, heat, 160)
    assert big.shape == (160, 160, 3) and big_heat.shape == (160, 160)
    np.testing.assert_array_equal(big[::5, ::5], image)  # nearest neighbour: pixels kept
    fig = new_figure(2, 2)
    ax = fig.add_subplot()
    overlay(ax, image, heat, min_pixels=160, contour=True, alpha=0.5)
    assert ax.images[-1].get_array().shape == (160, 160) and ax.images[-1].get_label() == "heatmap"
    assert ax.collections  # the contour
    assert upscale(image, heat, 16)[0] is image


def test_tiles_name_images_and_concepts():
    img = np.zeros((8, 8, 3))
    tiles = ConceptTiles([3, 7], [[img], [img]], [[img[..., 0]], [img[..., 0]]], [[1.5], [0.25]],
                         [[4], [9]], [["/data/cat.png"], ["image 9"]], ["red_disc (AUC 0.97)", ""])  # fmt: skip
    assert tiles.caption(0, 0) == "cat.png · 1.5" and tiles.caption(1, 0) == "image 9 · 0.25"
    assert tiles.concept_label(0) == "concept 3: red_disc (AUC 0.97)"
    assert tiles.concept_label(1, prefix="c") == "c7"
    assert tiles.head(1).concepts == [3] and tiles.head(1).labels == ["red_disc (AUC 0.97)"]
    bare = ConceptTiles([3], [[img]], [[img[..., 0]]], [[1.0]], [[4]])
    assert bare.caption(0, 0) == "#4 · 1" and bare.concept_label(0) == "concept 3"
    fig = draw_top_images(tiles, min_pixels=64)
    assert fig.axes[0].get_title() == "cat.png · 1.5"


def test_fvu_l0_front_places_each_sae():
    reports = {"a": {"fvu": 0.2, "l0": 8, "family": "topk"}, "b": {"fvu": 0.1, "l0": 32, "family": "topk"},
               "c": {"fvu": 0.15, "l0": 16, "family": "mp"}}  # fmt: skip
    fig = plot_fvu_l0(reports)
    ax = fig.axes[0]
    points = {(float(x), float(y)) for line in ax.get_lines() for x, y in line.get_xydata()}
    assert points == {(8.0, 0.2), (32.0, 0.1), (16.0, 0.15)}
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="fvu and l0"):
        plot_fvu_l0([{"fvu": 0.1}])


def test_similarity_of_a_dictionary_with_itself_and_a_signed_permutation(world):
    sae = world[1].saes["topk"]
    fig = plot_similarity(sae)
    cos = np.asarray(fig.axes[0].images[0].get_array())
    assert cos.shape == (64, 64)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-6)
    np.testing.assert_allclose(cos, cos.T, atol=1e-6)
    atoms = sae.dictionary.detach()
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    signs = torch.where(torch.arange(64) % 2 == 0, 1.0, -1.0)[:, None]
    shuffled = atoms[perm] * signs * 3.0  # permuted, sign-flipped, rescaled
    matched, rows, cols = similarity_matrix(atoms, shuffled, match=True)
    np.testing.assert_allclose(np.abs(np.diag(matched)), 1.0, atol=1e-6)
    np.testing.assert_array_equal(perm[cols].numpy(), rows)
    fig = plot_similarity(atoms, shuffled, match=True)
    assert "matched |cos| 1.000" in fig.axes[0].get_title()
    unequal, _, _ = similarity_matrix(atoms[:10], atoms, match=True)
    assert unequal.shape == (10, 64)
    np.testing.assert_allclose(np.diag(unequal[:, :10]), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="widths"):
        similarity_matrix(atoms, torch.randn(4, 7))


def test_display_image_shows_what_the_user_gave():
    from PIL import Image

    pixels = torch.rand(3, 16, 16)
    np.testing.assert_allclose(display_image(pixels), pixels.permute(1, 2, 0).numpy())
    normalised = pixels * 4 - 2  # e.g. CLIP-normalised: shown min-max scaled
    shown = display_image(normalised)
    assert shown.min() == 0.0 and shown.max() == pytest.approx(1.0)
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 5, 20))  # blue left strip, cropped away by the centre crop
    out = display_image(wide, (16, 16))
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[..., 0], 1.0)


def test_heatmaps_take_one_pil_image(world):
    """One PIL image is a source of one image (`probe_sae.data.image_source`), drawn as a row."""
    from PIL import Image

    from probe_sae.data import image_source

    model, result, test = world
    array = (test.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    source = image_source(image)
    assert len(source) == 1 and source.read(0, 2) == [image]
    fig = plot_concept_heatmaps(model, LAYER, result.saes["topk"], image, [0, 1])
    assert len(fig.axes) == 3 and _heat(fig.axes[1]).shape == (64, 64)


def test_plot_maps_checks_its_inputs():
    with pytest.raises(ValueError, match="one image per row"):
        plot_maps(torch.rand(2, 3, 8, 8), torch.rand(3, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, X, h, w\)"):
        plot_maps(torch.rand(2, 3, 8, 8), torch.rand(2, 2, 2))
    fig = plot_maps(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 2, 2), titles=["a", "b", "c"])
    assert len(fig.axes) == 8 and fig.axes[1].get_title() == "a"
