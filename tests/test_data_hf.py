"""Hugging Face ``datasets`` as image sources: a saved ``Dataset`` through the ``hf:`` spec into
training (and an exact resume), the same data streamed as an ``IterableDataset``, labels from
``ClassLabel`` columns, per-rank parts, and the error when the extra is not installed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets")

from probe_sae.config import ConfigError  # noqa: E402
from probe_sae.data import (  # noqa: E402
    HFImages,
    HFIterableImages,
    ShardedImages,
    hf_images,
    image_source,
    shard_images,
)
from probe_sae.models import load_model  # noqa: E402
from probe_sae.organism import KIND_NAMES, generate  # noqa: E402
from probe_sae.run import parse_images  # noqa: E402
from probe_sae.stream.activations import ActivationStream  # noqa: E402
from probe_sae.train.api import train_sae  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N = 24
CLASSES = ["few", "some", "many"]


def _pil(images_NCHW: torch.Tensor) -> list[Image.Image]:
    arrays = (images_NCHW.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(a) for a in arrays]


@pytest.fixture(scope="module")
def world():
    return generate(N, seed=5)


@pytest.fixture(scope="module")
def dataset(world):
    """Synthetic collages, a ClassLabel (how many objects) and a Sequence(ClassLabel) (which)."""
    counts = world.presence.sum(1).long()
    label = [min(int(c) - 1, 2) for c in counts]
    objects = [torch.nonzero(row).flatten().tolist() for row in world.presence]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=CLASSES),
            "objects": datasets.Sequence(datasets.ClassLabel(names=list(KIND_NAMES))),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": _pil(world.images), "label": label, "objects": objects}, features=features
    )


@pytest.fixture(scope="module")
def saved(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "collages"
    dataset.save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


def _arrays(images) -> list[np.ndarray]:
    return [np.asarray(im) for im in images]


def _same(images, arrays) -> bool:
    got = _arrays(images)
    return len(got) == len(arrays) and all(np.array_equal(a, b) for a, b in zip(got, arrays, strict=True))


def test_a_dataset_is_read_by_row_with_its_labels(dataset, world):
    source = image_source(dataset)
    assert isinstance(source, HFImages) and len(source) == N
    assert source.image_column == "image"
    expected = _arrays(_pil(world.images))
    assert _same(source.read(0, N), expected)
    assert _same(source.read(N - 2, 10), expected[N - 2 :])  # clipped at the end
    assert source.read(N, 4) == []

    labels = source.labels()
    assert labels.names == [f"label:{c}" for c in CLASSES] + [f"objects:{k}" for k in KIND_NAMES]
    assert labels.presence.shape == (N, 3 + 16)
    assert torch.equal(labels.presence[:, :3].sum(1), torch.ones(N))  # ClassLabel: one-hot
    assert torch.equal(labels.presence[:, 3:], world.presence)  # Sequence(ClassLabel): multi-hot

    only = HFImages(dataset, label_columns="objects").labels()
    assert only.names == list(KIND_NAMES) and torch.equal(only.presence, world.presence)
    assert HFImages(dataset, label_columns=()).labels() is None


def test_labels_are_read_without_decoding_images(dataset, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(datasets.Image, "decode_example", no_decoding)
    labels = HFImages(dataset).labels()
    assert labels.presence.shape == (N, 19)


def test_undecodable_images_are_none_and_counted(tmp_path):
    good = Image.new("RGB", (8, 8), (10, 20, 30))
    ds = datasets.Dataset.from_dict(
        {"image": [good, {"bytes": b"not an image", "path": None}, good]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    source = image_source(ds)
    images = source.read(0, 3)
    assert images[1] is None and images[0] is not None and images[2] is not None
    source.read(1, 1)
    assert source.skipped == 1  # counted once per image
    assert "row 1" in source.name(1)


def test_wrong_columns_and_splits_are_refused_with_the_fix(dataset):
    with pytest.raises(ValueError, match="class_encode_column"):
        HFImages(dataset.cast_column("label", datasets.Value("int64")), label_columns="label")
    image = Image.new("RGB", (8, 8))
    two_images = datasets.Dataset.from_dict(
        {"image": [image], "other": [image]},
        features=datasets.Features({"image": datasets.Image(), "other": datasets.Image()}),
    )
    with pytest.raises(ValueError, match="name the image column"):
        HFImages(two_images)
    assert HFImages(two_images, image_column="other").image_column == "other"
    with pytest.raises(ValueError, match="no column 'img'"):
        HFImages(dataset, image_column="img")
    with pytest.raises(TypeError, match=r"pick one, ds\['train'\]"):
        image_source(datasets.DatasetDict({"train": dataset}))


def test_the_hf_spec_gives_labels_and_names_for_the_report(saved, world):
    images = parse_images(f"hf:{saved}")
    assert isinstance(images.source, HFImages)
    assert images.labels.shape == (N, 19) and len(images.label_names) == 19
    one = parse_images(f"hf:{saved}:image:objects")
    assert one.label_names == list(KIND_NAMES)
    assert torch.equal(one.labels, world.presence)
    assert "label classes" in one.description
    for bad, match in [
        (f"hf:{saved}:image:objects:extra", r"hf:PATH:IMAGE_COLUMN:LABEL_COLUMN"),
        (f"hf:{saved}/missing", "save_to_disk"),
        (f"hf:{saved}:picture", "no column 'picture'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_images(bad)
    splits = saved.parent / "splits"
    datasets.DatasetDict({"train": datasets.load_from_disk(str(saved))}).save_to_disk(str(splits))
    with pytest.raises(ConfigError, match=r"splits \['train'\]"):
        parse_images(f"hf:{splits}")
    assert parse_images(f"hf:{splits}/train").labels.shape == (N, 19)


def _stream(model, source, **kw):
    base = dict(batch_size=64, buffer_tokens=256, image_batch_size=8, provenance=True)
    base.update(kw)
    return ActivationStream(model, source, "blocks.2", **base)


def test_a_stream_over_the_hf_spec_resumes_on_the_next_batch(organism, saved):
    stream = _stream(organism, parse_images(f"hf:{saved}").source)
    states, batches = [], []
    while True:
        states.append(stream.state_dict())
        batch = stream.next_batch()
        if batch is None:
            break
        batches.append(batch)
    assert len(batches) == N * 69 // 64
    assert torch.unique(torch.cat([b["image_index"] for b in batches])).tolist() == list(range(N))
    for i in (1, len(batches) // 2, len(batches) - 1):
        fresh = _stream(organism, parse_images(f"hf:{saved}").source)  # a new process would
        fresh.load_state_dict(states[i])
        again = fresh.next_batch()
        for key in ("image_index", "token_index", "blocks.2"):
            assert torch.equal(again[key], batches[i][key]), (i, key)


@pytest.mark.filterwarnings("ignore::probe_sae.train.summary.ShortRunWarning")  # tiny on purpose
def test_training_from_the_hf_spec_resumes_exactly(organism, saved, tmp_path, monkeypatch):
    common = dict(
        sae="topk", n_concepts=64, k=4, batch_size=64, buffer_tokens=256, image_batch_size=8,
        epochs=2, lr=3e-3, init_tokens=256, log_every=5, summary_tokens=256, progress=False,
    )  # fmt: skip
    served: list[torch.Tensor] = []
    original = ActivationStream.next_batch

    def recording(self):
        batch = original(self)
        if batch is not None:
            served.append(batch["blocks.2"])
        return batch

    monkeypatch.setattr(ActivationStream, "next_batch", recording)
    straight = train_sae(
        organism, "blocks.2", parse_images(f"hf:{saved}").source,
        checkpoint_dir=str(tmp_path / "a"), **common,
    )  # fmt: skip
    assert straight.steps == 2 * (N * 69 // 64)
    straight_served, served[:] = list(served), []

    calls = {"n": 0}

    def interrupting(self):
        calls["n"] += 1
        if calls["n"] == 4 + 11:  # 4 batches of init sampling, then 10 training steps
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(ActivationStream, "next_batch", interrupting)
    run_b = dict(common, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=5)
    with pytest.raises(KeyboardInterrupt):
        train_sae(organism, "blocks.2", parse_images(f"hf:{saved}").source, **run_b)
    assert (tmp_path / "b" / "latest").read_text() == "step-000000010"

    monkeypatch.setattr(ActivationStream, "next_batch", recording)
    resumed = train_sae(
        organism, "blocks.2", parse_images(f"hf:{saved}").source, resume=tmp_path / "b", **run_b
    )
    assert resumed.steps == straight.steps
    # the resumed run was served exactly the batches the straight run was served after step 10
    assert len(served) == straight.steps - 10
    for got, want in zip(served, straight_served[-len(served) :], strict=True):
        assert torch.equal(got, want)
    for key, value in straight.saes["topk"].state_dict().items():
        torch.testing.assert_close(resumed.saes["topk"].state_dict()[key], value, rtol=0, atol=1e-6)


def test_an_iterable_dataset_reads_the_same_images_in_order_and_seeks(dataset):
    mapped = image_source(dataset)
    streamed = image_source(dataset.to_iterable_dataset(num_shards=3))
    assert isinstance(streamed, HFIterableImages) and streamed.length is None
    whole = _arrays(mapped.read(0, N))
    assert _same(streamed.read(0, N), whole)
    for start, count in [(5, 3), (20, 10), (2, 4), (0, 1), (23, 1), (N, 2)]:  # back and forth
        assert _same(streamed.read(start, count), whole[start : start + count])
    fresh = image_source(dataset.to_iterable_dataset(num_shards=3))
    assert _same(fresh.read(17, 3), whole[17:20])  # a first read that seeks
    assert torch.equal(streamed.labels().presence, mapped.labels().presence)
    assert streamed.labels().names == mapped.labels().names
    with pytest.raises(TypeError, match="length="):
        len(streamed)
    assert len(hf_images(dataset.to_iterable_dataset(), length=N)) == N


def test_a_stream_over_an_iterable_dataset_equals_one_over_the_dataset(organism, dataset):
    def drain(stream):
        return [b for b in iter(stream.next_batch, None)]

    mapped = drain(_stream(organism, dataset))
    streamed_source = image_source(dataset.to_iterable_dataset(num_shards=2))
    stream = _stream(organism, streamed_source)
    state = None
    streamed = []
    while (batch := stream.next_batch()) is not None:
        streamed.append(batch)
        if len(streamed) == 9:
            state = stream.state_dict()
    assert len(streamed) == len(mapped)
    for a, b in zip(streamed, mapped, strict=True):
        assert torch.equal(a["blocks.2"], b["blocks.2"])
        assert torch.equal(a["image_index"], b["image_index"])
    resumed = _stream(organism, image_source(dataset.to_iterable_dataset(num_shards=2)))
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next_batch()["blocks.2"], streamed[9]["blocks.2"])


def _fingerprints(source) -> list[bytes]:
    return [np.asarray(im).tobytes() for im in source.read(0, 10**6)]


@pytest.mark.parametrize("strided", [False, True])
def test_two_ranks_get_disjoint_parts_that_make_the_dataset(dataset, strided):
    whole = image_source(dataset)
    parts = [shard_images(whole, rank, 2, strided=strided) for rank in (0, 1)]
    assert all(isinstance(p, ShardedImages) for p in parts)
    indices = [list(p.indices) for p in parts]
    assert not set(indices[0]) & set(indices[1])
    assert sorted(indices[0] + indices[1]) == list(range(N))
    prints = _fingerprints(whole)
    for part, idx in zip(parts, indices, strict=True):
        assert _fingerprints(part) == [prints[i] for i in idx]
        assert torch.equal(part.labels().presence, whole.labels().presence[idx])
        assert part.labels().names == whole.labels().names
    if not strided:
        assert indices[0] == list(range(N // 2))
    assert shard_images(whole, 0, 1) is whole
    with pytest.raises(ValueError, match=r"0 \.\. world_size - 1"):
        shard_images(whole, 2, 2)
    with pytest.raises(ValueError, match="at least one image"):
        shard_images(whole, 0, N + 1)


def test_two_ranks_of_an_iterable_dataset_split_it(dataset):
    whole = _fingerprints(image_source(dataset))
    for num_shards in (2, 3):  # whole shards per rank, or every other example
        it = dataset.to_iterable_dataset(num_shards=num_shards)
        parts = [shard_images(image_source(it), rank, 2) for rank in (0, 1)]
        got = [_fingerprints(p) for p in parts]
        assert sorted(got[0] + got[1]) == sorted(whole) and len(got[0]) + len(got[1]) == N
        names = [p.labels().names for p in parts]
        assert names[0] == names[1] == HFImages(dataset).labels().names


def test_a_missing_datasets_package_names_the_extra(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now fails
    with pytest.raises(ImportError, match=r'pip install "probe_sae\[datasets\]"'):
        parse_images(f"hf:{saved}")


def test_importing_the_data_package_does_not_import_datasets():
    code = (
        "import sys, torch\n"
        "from probe_sae.data import image_source\n"
        "image_source(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))\n"
        "image_source([1, 2])\n"
        "assert 'datasets' not in sys.modules and 'webdataset' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
