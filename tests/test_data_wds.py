"""WebDataset shards as an image source: the ``wds:`` spec with a brace pattern, a corrupt image
counted and stepped over, cheap seeks, exact resume of a stream, labels from ``cls`` members,
damaged tar files, fsspec URLs, whole shards per rank (also in a real 2-process gloo group),
and the error when the extra is not installed."""

from __future__ import annotations

import io
import random
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

webdataset = pytest.importorskip("webdataset")

from probe_sae.config import ConfigError  # noqa: E402
from probe_sae.data import WebDatasetImages, shard_images  # noqa: E402
from probe_sae.data import wds as wds_module  # noqa: E402
from probe_sae.models import load_model  # noqa: E402
from probe_sae.organism import generate  # noqa: E402
from probe_sae.run import parse_images  # noqa: E402
from probe_sae.stream.activations import ActivationStream  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = (5, 4, 6)  # samples per shard
N = sum(SIZES)
CORRUPT = 7  # the third sample of the second shard: its image member does not decode


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    images = generate(N, seed=2).images
    arrays = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(a) for a in arrays]


def _write_shards(folder, pictures, open_file=None) -> list[str]:
    paths, i = [], 0
    for s, size in enumerate(SIZES):
        path = f"{folder}/shards-{s:03d}.tar"
        stream = open_file(path) if open_file else open(path, "wb")  # noqa: SIM115
        with webdataset.TarWriter(stream) as sink:
            for _ in range(size):
                image = b"\x89PNG broken" if i == CORRUPT else _png(pictures[i])
                sink.write({"__key__": f"{i:06d}", "png": image, "cls": str(i % 3), "txt": f"t{i % 2}"})
                i += 1
        stream.close()
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def shards(pictures, tmp_path_factory):
    folder = tmp_path_factory.mktemp("wds")
    _write_shards(folder, pictures)
    return folder


def _pattern(shards) -> str:
    return f"{shards}/shards-{{000..002}}.tar"


def _same(got, pictures, positions) -> bool:
    want = [None if i == CORRUPT else np.asarray(pictures[i]) for i in positions]
    if len(got) != len(want):
        return False
    return all(
        (a is None and b is None) or (a is not None and b is not None and np.array_equal(np.asarray(a), b))
        for a, b in zip(got, want, strict=True)
    )


def test_shards_are_read_in_order_and_a_corrupt_image_is_counted(shards, pictures):
    images = parse_images(f"wds:{_pattern(shards)}")
    source = images.source
    assert isinstance(source, WebDatasetImages) and images.labels is None
    assert [u.rsplit("/", 1)[-1] for u in source.urls] == [f"shards-00{i}.tar" for i in range(3)]
    with pytest.raises(TypeError, match="scan"):
        len(source)  # not known before the shards are counted
    got = source.read(0, 100)
    assert _same(got, pictures, range(N))
    assert source.skipped == 1 and "shards-001.tar" in source.name(CORRUPT)
    assert "'000007'" in source.name(CORRUPT)
    source.read(CORRUPT, 1)
    assert source.skipped == 1  # once per image
    assert source.shard_lengths == list(SIZES)
    assert source.read(N, 3) == []


def test_seeks_skip_whole_shards_once_they_are_counted(shards, pictures, monkeypatch):
    opened: list[str] = []
    real_open = wds_module._open

    def spying(url):
        opened.append(url.rsplit("/", 1)[-1])
        return real_open(url)

    monkeypatch.setattr(wds_module, "_open", spying)
    fresh = WebDatasetImages(_pattern(shards), lookback=0)  # no cache: every read seeks
    assert _same(fresh.read(12, 2), pictures, [12, 13])  # counts shards 0 and 1 on the way
    assert opened == ["shards-000.tar", "shards-001.tar", "shards-002.tar"]
    assert fresh.shard_lengths == [5, 4, None]
    fresh.read(0, N)
    opened.clear()
    assert _same(fresh.read(11, 2), pictures, [11, 12])
    assert _same(fresh.read(3, 1), pictures, [3])
    assert _same(fresh.read(6, 2), pictures, [6, 7])
    assert opened == ["shards-002.tar", "shards-000.tar", "shards-001.tar"]  # one shard each
    rng = random.Random(0)
    for _ in range(12):  # any order of reads gives the straight read's images
        start, count = rng.randrange(N + 2), rng.randrange(1, 6)
        assert _same(fresh.read(start, count), pictures, range(start, min(start + count, N)))


def _stream(model, source, **kw):
    base = dict(batch_size=64, buffer_tokens=256, image_batch_size=4, provenance=True)
    base.update(kw)
    return ActivationStream(model, source, "blocks.2", **base)


def test_a_stream_over_shards_steps_over_the_corrupt_image_and_resumes_exactly(shards):
    model = load_model("organism")
    stream = _stream(model, WebDatasetImages(_pattern(shards)))
    states, batches = [], []
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        while True:
            states.append(stream.state_dict())
            batch = stream.next_batch()
            if batch is None:
                break
            batches.append(batch)
    assert stream.skipped_images == 1
    seen = torch.unique(torch.cat([b["image_index"] for b in batches])).tolist()
    assert CORRUPT not in seen and len(seen) >= N - 2  # the tail of the last window is dropped
    for i in (1, len(batches) // 2, len(batches) - 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fresh stream skips the same image again
            fresh = _stream(model, WebDatasetImages(_pattern(shards)))  # as in a new process
            fresh.load_state_dict(states[i])
            again = fresh.next_batch()
        for key in ("image_index", "token_index", "blocks.2"):
            assert torch.equal(again[key], batches[i][key]), (i, key)


def test_labels_come_from_the_cls_member(shards):
    images = parse_images(f"wds:{_pattern(shards)}::label=cls")
    assert images.label_names == ["0", "1", "2"]
    assert images.labels.shape == (N, 3)
    assert images.labels.argmax(1).tolist() == [i % 3 for i in range(N)]  # the corrupt one too
    assert len(images.source) == N  # counted by the pass that read the labels
    named = WebDatasetImages(_pattern(shards), classes=["cat", "dog", "fish"]).labels()
    assert named.names == ["cat", "dog", "fish"]
    assert torch.equal(named.presence, images.labels)
    text = parse_images(f"wds:{_pattern(shards)}::label=txt::image=png")
    assert text.label_names == ["t0", "t1"] and text.labels[:, 1].tolist() == [i % 2 for i in range(N)]
    assert WebDatasetImages(_pattern(shards), label_key="json").labels() is None


def test_a_damaged_tar_ends_its_shard_with_a_warning(shards, pictures, tmp_path):
    whole = (shards / "shards-002.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[: len(whole) // 2])
    source = WebDatasetImages([str(shards / "shards-000.tar"), str(tmp_path / "cut.tar")])
    with pytest.warns(UserWarning, match="cut.tar is damaged"):
        got = source.read(0, 100)
    assert 5 < len(got) < 5 + 6
    positions = [*range(5), *range(9, 9 + len(got) - 5)]
    kept = [(im, i) for im, i in zip(got, positions, strict=True) if im is not None]
    assert _same([im for im, _ in kept], pictures, [i for _, i in kept])
    assert len(kept) >= len(got) - 1 and source.skipped == len(got) - len(kept)  # a cut sample
    assert list(source.damaged) == [str(tmp_path / "cut.tar")]


def test_fsspec_urls_are_read_like_files(pictures):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    _write_shards("memory://probe-sae-test", pictures, open_file=lambda p: fs.open(p, "wb"))
    try:
        source = parse_images("wds:memory://probe-sae-test/shards-{000..002}.tar").source
        assert _same(source.read(0, N), pictures, range(N))
        assert _same(source.read(9, 3), pictures, [9, 10, 11])
    finally:
        fs.rm("/probe-sae-test", recursive=True)


def _fingerprints(images) -> list[bytes | None]:
    return [None if im is None else np.asarray(im).tobytes() for im in images]


def test_two_ranks_get_whole_shards_round_robin(shards):
    whole = WebDatasetImages(_pattern(shards))
    parts = [shard_images(whole, rank, 2) for rank in (0, 1)]
    assert [[u.rsplit("-", 1)[-1] for u in p.urls] for p in parts] == [
        ["000.tar", "002.tar"],
        ["001.tar"],
    ]
    all_images = _fingerprints(whole.read(0, N))
    got = [_fingerprints(p.read(0, N)) for p in parts]
    assert got[0] == all_images[:5] + all_images[9:] and got[1] == all_images[5:9]
    labels = whole.labels()
    assert torch.equal(parts[0].labels().presence, labels.presence[[*range(5), *range(9, N)]])
    assert torch.equal(parts[1].labels().presence, labels.presence[5:9])
    assert parts[1].labels().names == labels.names
    with pytest.raises(ValueError, match="at least 4 shards"):
        shard_images(whole, 0, 4)


def _rank_main(rank: int, store: str, pattern: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        tensor_images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2)
        parts = {
            "wds": shard_images(WebDatasetImages(pattern)),  # rank and world size from the group
            "tensor": shard_images(tensor_images),
        }
        mine = {k: _fingerprints(p.read(0, 100)) for k, p in parts.items()}
        mine["tensor"] = [int(t[0, 0, 0]) for t in parts["tensor"].read(0, 100)]
        everyone: list[dict] = [{}, {}]
        dist.all_gather_object(everyone, mine)
        if rank == 0:
            torch.save(everyone, out)
    finally:
        dist.destroy_process_group()


def test_ranks_of_a_real_process_group_split_the_images(shards, tmp_path):
    import torch.multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs the fork start method")
    out = tmp_path / "parts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.start_processes(
            _rank_main,
            args=(str(tmp_path / "store"), _pattern(shards), str(out)),
            nprocs=2,
            start_method="fork",
        )
    everyone = torch.load(out, weights_only=False)
    whole = _fingerprints(WebDatasetImages(_pattern(shards)).read(0, N))
    assert everyone[0]["wds"] + everyone[1]["wds"] == whole[:5] + whole[9:] + whole[5:9]
    assert everyone[0]["tensor"] == [0, 1, 2, 3, 4] and everyone[1]["tensor"] == [5, 6, 7, 8, 9]


def test_bad_wds_specs_name_the_accepted_forms(shards):
    for spec, match in [
        ("wds:", r"wds:PATTERN_OR_URL"),
        (f"wds:{shards}/nothing-{{0..1}}.tar", "2 of the 2 shards do not exist"),
        (f"wds:{_pattern(shards)}::labels=cls", r"::label=\.\.\., ::image=\.\.\."),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_images(spec)


def test_a_missing_webdataset_package_names_the_extra(shards, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(ImportError, match=r'pip install "probe_sae\[datasets\]"'):
        parse_images(f"wds:{_pattern(shards)}")
    with pytest.raises(ImportError, match=r"reading WebDataset shards needs .*'webdataset'"):
        WebDatasetImages([str(shards / "shards-000.tar")])


def test_train_counts_the_samples_when_its_length_comes_from_epochs(shards, tmp_path, capsys):
    """`probe-sae train --images wds:...` without --max-steps: one pass counts the samples, then
    the run lasts its epochs (the length is unknown until then)."""
    from probe_sae.cli import main

    argv = ["train", "organism", "--layer", "blocks.2", "--images", f"wds:{_pattern(shards)}"]
    argv += ["--sae", "topk", "--n-concepts", "32", "--k", "4", "--batch-size", "64"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short run, and the corrupt sample
        assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "counting the samples of" in out
    steps = int(re.search(r"^(\d+) steps", out, re.M).group(1))
    # one epoch: every readable sample (the corrupt one is skipped), 69 tokens each
    assert steps == ((N - 1) * 69) // 64, out
