"""A folder of images with a CSV or JSON label file: presence and class names, the spec forms
(auto-detected ``labels.csv`` / ``labels.json``, ``FOLDER::labels=FILE``), the error for images
without an entry, per-rank parts, and the labels reaching the report from the command line."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from probe_sae import cli
from probe_sae.config import ConfigError
from probe_sae.data import (
    ImageLabels,
    LabelledFolder,
    image_labels,
    label_presence,
    shard_images,
)
from probe_sae.run import parse_images

FILES = ["a.png", "b.png", "sub/c.png", "sub/d.jpg"]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    for i, name in enumerate(FILES):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(path)
    return root


def _csv(path, rows):
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))


def test_a_csv_label_file_gives_presence_and_names(folder):
    _csv(
        folder / "labels.csv",
        [("a.png", "dog"), ("./b.png", "cat"), ("sub/c.png", "cat"), ("sub/c.png", "dog"),
         ("sub/d.jpg", "")],
    )  # fmt: skip
    source = LabelledFolder(folder)
    labels = source.labels()
    assert labels.names == ["cat", "dog"]
    assert labels.presence.tolist() == [[0, 1], [1, 0], [1, 1], [0, 0]]  # multi-label, none
    assert len(source) == 4 and source.read(3, 1)[0].size == (8, 8)
    images = parse_images(str(folder))  # labels.csv at the root is found
    assert isinstance(images.source, LabelledFolder)
    assert images.label_names == ["cat", "dog"] and torch.equal(images.labels, labels.presence)


def test_a_json_label_file_and_the_labels_option(folder, tmp_path):
    entries = {"a.png": "3", "b.png": ["1", "10"], "sub/c.png": [], "sub/d.jpg": 2}
    elsewhere = tmp_path / "meta.json"
    elsewhere.write_text(json.dumps(entries))
    images = parse_images(f"{folder}::labels={elsewhere}")
    assert images.label_names == ["1", "2", "3", "10"]  # numbers in numeric order
    assert images.labels.tolist() == [[0, 0, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]]
    (folder / "labels.json").write_text(json.dumps(entries))
    assert parse_images(str(folder)).label_names == ["1", "2", "3", "10"]
    assert parse_images(f"{folder}::labels=labels.json").labels.shape == (4, 4)  # in the folder


def test_images_missing_from_the_label_file_are_named(folder):
    _csv(folder / "labels.csv", [("a.png", "dog"), ("c.png", "cat")])  # c.png is in sub/
    with pytest.raises(ValueError, match=r"3 of the 4 images .* \(the first: b\.png, sub/c\.png"):
        LabelledFolder(folder)
    with pytest.raises(ConfigError, match="add a row for each"):
        parse_images(str(folder))


def test_entries_without_an_image_warn_and_bad_files_say_the_format(folder):
    _csv(folder / "labels.csv", [(f, "x") for f in [*FILES, "gone.png"]])
    with pytest.warns(UserWarning, match="gone.png"):
        LabelledFolder(folder)
    (folder / "labels.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(ConfigError, match="columns path,label"):
        parse_images(str(folder))
    (folder / "labels.csv").unlink()
    (folder / "labels.json").write_text(json.dumps(["a.png"]))
    with pytest.raises(ConfigError, match="one object"):
        parse_images(str(folder))


def test_plain_folders_and_bad_specs(folder):
    images = parse_images(str(folder))  # no label file: as before
    assert images.source == str(folder) and images.labels is None and images.label_names is None
    for spec in ["no/such/folder", f"{folder}::label=x.csv"]:
        with pytest.raises(ConfigError, match=r"synthetic:N\[:SEED\].*hf:PATH.*wds:PATTERN"):
            parse_images(spec)
    synthetic = parse_images("synthetic:8")
    assert synthetic.labels.shape == (8, 16) and len(synthetic.label_names) == 16


def test_label_presence_and_image_labels():
    labels = label_presence(["b", None, ["a", "b"], 3])
    assert labels.names == ["3", "a", "b"]
    assert labels.presence.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert labels.class_indices() is None  # a row with none, a row with two
    one_each = label_presence(["x", "y", "x"])
    assert one_each.class_indices().tolist() == [0, 1, 0]
    assert one_each.subset([2, 1]).presence.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match=r"\['z'\] are not among"):
        label_presence(["z"], names=["x"])
    with pytest.raises(ValueError, match="give \\(N, K\\) presence and K names"):
        ImageLabels(torch.zeros(2, 3), ["a"])
    assert image_labels(torch.zeros(1)) is None


def test_labels_follow_the_rank_of_a_labelled_folder(folder):
    _csv(folder / "labels.csv", [(f, f"c{i}") for i, f in enumerate(FILES)])
    whole = LabelledFolder(folder)
    parts = [shard_images(whole, rank, 2) for rank in (0, 1)]
    assert [p.name(0) for p in parts] == [whole.name(0), whole.name(2)]
    assert parts[0].labels().names == whole.labels().names
    assert torch.equal(
        torch.cat([p.labels().presence for p in parts]), whole.labels().presence
    )


def test_the_report_command_passes_labels_and_their_names(folder, monkeypatch):
    _csv(folder / "labels.csv", [(f, "cat" if i % 2 else "dog") for i, f in enumerate(FILES)])
    seen = {}

    def write_report(saes, images, out, **kwargs):
        seen.update(kwargs, images=images)
        return out

    import probe_sae.report

    monkeypatch.setattr(probe_sae.report, "write_report", write_report)
    monkeypatch.setattr(cli, "_load_saes", lambda dirs: {"topk": object()})
    monkeypatch.setattr(cli, "_model_for", lambda saes, model: None)
    monkeypatch.setattr(cli, "_layer_for", lambda model, sae, layer: None)
    args = argparse.Namespace(sae_dirs=[str(folder)], model=None, images=str(folder), out="r.html")
    assert cli._cmd_report(args) == 0
    assert seen["label_names"] == ["cat", "dog"]
    assert seen["labels"].tolist() == [[0, 1], [1, 0], [0, 1], [1, 0]]
    assert isinstance(seen["images"], LabelledFolder)
