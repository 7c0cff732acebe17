"""ActivationStream and image sources on a real architecture (timm ViT, random weights)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from probe_sae.data.images import ImageFolder, IterableImages, image_source
from probe_sae.hooks import capture
from probe_sae.models import load_model
from probe_sae.stream import activations
from probe_sae.stream.activations import ActivationStream
from probe_sae.train import TrainConfig, Trainer
from probe_sae.train.api import train_sae


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return load_model("timm:vit_tiny_patch16_224", img_size=64, reg_tokens=4)


@pytest.fixture(scope="module")
def images():
    return torch.rand(60, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _stream(vit, images, **kw):
    base = dict(batch_size=32, buffer_tokens=300, image_batch_size=8, provenance=True)
    base.update(kw)
    return ActivationStream(vit, images, ["blocks.2", 4], **base)


def _drain(stream):
    out = []
    while (b := stream.next_batch()) is not None:
        out.append(b)
    return out


def test_stream_serves_every_token_once_per_epoch_matching_capture(vit, images):
    stream = _stream(
        vit, images, buffer_tokens=2048
    )  # one window holds everything: nothing dropped but the tail
    batches = _drain(stream)
    served = torch.cat([b["blocks.2"] for b in batches])
    ref = capture(vit, images, "blocks.2")["blocks.2"]
    assert served.shape[0] == (60 * 21) // 32 * 32
    # every served token is the captured token of its (image, position), bit for bit
    img = torch.cat([b["image_index"] for b in batches])
    tok = torch.cat([b["token_index"] for b in batches])
    expected = ref.per_image()[img, tok]
    assert torch.equal(served, expected)
    assert len(set(zip(img.tolist(), tok.tolist(), strict=True))) == served.shape[0]  # no repeats
    assert torch.equal(
        torch.cat([b["blocks.4"] for b in batches]),
        capture(vit, images, 4)["blocks.4"].per_image()[img, tok],
    )


def test_drop_last_false_serves_every_token_over_several_windows(vit, images):
    for epochs in (1, 2):
        stream = _stream(vit, images, drop_last=False, epochs=epochs)  # windows of 320 tokens
        batches = _drain(stream)
        sizes = [b["blocks.2"].shape[0] for b in batches]
        assert sum(sizes) == epochs * 60 * 21
        assert sizes.count(32) == len(sizes) - epochs  # one partial batch per epoch
        pairs = list(
            zip(torch.cat([b["image_index"] for b in batches]).tolist(),
                torch.cat([b["token_index"] for b in batches]).tolist(), strict=True)
        )
        assert len(set(pairs)) == 60 * 21  # each (image, token) once per epoch


def test_each_image_is_captured_once_per_epoch_across_window_boundaries(vit, images, monkeypatch):
    """Windows of 300 tokens end inside image batches of 8; the next window must reuse that
    batch's activations rather than run the model on its images again."""
    stream = _stream(vit, images, epochs=2)
    seen: list[int] = []

    def counting_capture(model, pixels, *args):
        seen.append(pixels.shape[0])
        return capture(model, pixels, *args)

    monkeypatch.setattr(activations, "capture", counting_capture)
    batches = _drain(stream)
    assert stream.window == 0 and len(batches) > 2 * 60 * 21 // 320  # several windows per epoch
    assert seen == ([8] * 7 + [4]) * 2  # aligned batches of 8; each epoch ends with the last 4
    assert stream.images_read == 2 * 60


def test_tokens_of_one_image_do_not_arrive_together(vit, images):
    batches = _drain(_stream(vit, images))
    for b in batches:
        counts = torch.bincount(b["image_index"])
        # 21 tokens per image, a window of ~15 images: a batch of 32 mixes many images
        assert counts.max() <= 10
        assert (counts > 0).sum() >= 10


def test_stream_resumes_exactly_from_any_position(vit, images):
    stream = _stream(vit, images, epochs=2, shuffle_images=True, seed=3)
    states, batches = [], []
    while True:
        state = stream.state_dict()
        batch = stream.next_batch()
        if batch is None:
            break
        states.append(state)
        batches.append(batch)
    assert stream.epoch == 2 and len({s["window"] for s in states}) > 3
    random.seed(0)
    for i in random.sample(range(len(states)), 6):
        fresh = _stream(vit, images, epochs=2, shuffle_images=True, seed=3)
        fresh.load_state_dict(states[i])
        again = fresh.next_batch()
        for key in batches[i]:
            assert torch.equal(again[key], batches[i][key]), (i, key)
    # the two epochs visit images in different orders
    first = [
        b["image_index"][0].item() for b, s in zip(batches, states, strict=True) if s["epoch"] == 0
    ]
    second = [
        b["image_index"][0].item() for b, s in zip(batches, states, strict=True) if s["epoch"] == 1
    ]
    assert first != second


def test_image_folder_reads_recursively_and_skips_unreadable(tmp_path, vit):
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            tmp_path / "a" / f"{i}.png"
        )
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(
        tmp_path / "a" / "b" / "deep.jpg"
    )
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    folder = image_source(str(tmp_path))
    assert isinstance(folder, ImageFolder) and len(folder) == 7
    stream = ActivationStream(
        vit, folder, "blocks.1", batch_size=16, buffer_tokens=64, image_batch_size=4
    )
    batches = _drain(stream)
    assert stream.skipped_images == 1 and stream.images_read >= 6
    assert sum(b["blocks.1"].shape[0] for b in batches) == (6 * 21) // 16 * 16


class _PidStampingImages(torch.utils.data.Dataset):
    """PIL images that leave a file named after the process that read them."""

    def __init__(self, n: int, stamps) -> None:
        rng = np.random.default_rng(2)
        self.pixels = [rng.integers(0, 255, (48, 56, 3), dtype=np.uint8) for _ in range(n)]
        self.stamps = stamps

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i):
        import os

        (self.stamps / str(os.getpid())).touch()
        return Image.fromarray(self.pixels[i])


def test_dataloader_workers_read_ahead_and_change_nothing(tmp_path, vit):
    import os

    rng = np.random.default_rng(3)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i:02}.png")
    (tmp_path / "07.png").write_bytes(b"broken")

    def make(workers):
        return ActivationStream(
            vit, str(tmp_path), "blocks.1", batch_size=16, buffer_tokens=100, image_batch_size=4,
            epochs=2, shuffle_images=True, seed=1, num_workers=workers,
        )

    plain, ahead = make(0), make(2)
    assert plain.num_workers == 0 and ahead.num_workers == 2
    states, expected = [], []
    while True:
        states.append(plain.state_dict())
        batch = plain.next_batch()
        if batch is None:
            break
        expected.append(batch["blocks.1"])
    got = [b["blocks.1"] for b in _drain(ahead)]
    assert len(got) == len(expected) > 10
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert ahead.skipped_images == plain.skipped_images == 2  # the broken file, once per epoch
    for i in (3, len(expected) // 2, len(expected) - 1):  # resume with workers
        fresh = make(2)
        fresh.load_state_dict(states[i])
        assert torch.equal(fresh.next_batch()["blocks.1"], expected[i])

    # the images really are read in other processes
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    stream = ActivationStream(
        vit, _PidStampingImages(12, stamps), "blocks.1", batch_size=8, buffer_tokens=64,
        image_batch_size=4, num_workers=2,
    )
    assert len(_drain(stream)) == 12 * 21 // 8
    reader_pids = {p.name for p in stamps.iterdir()}
    assert reader_pids and str(os.getpid()) not in reader_pids
    # workers are not used where they cannot help
    assert ActivationStream(vit, torch.rand(4, 3, 64, 64), "blocks.1", num_workers=2).num_workers == 0


def test_iterables_of_pil_images_and_one_shot_iterators(vit):
    rng = np.random.default_rng(1)
    pics = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(6)]
    listed = _drain(
        ActivationStream(vit, pics, "blocks.1", batch_size=21, buffer_tokens=42, image_batch_size=4)
    )
    from_gen = _drain(
        ActivationStream(
            vit, (p for p in pics), "blocks.1", batch_size=21, buffer_tokens=42, image_batch_size=4
        )
    )
    assert len(listed) == 6 and all(
        torch.equal(a["blocks.1"], b["blocks.1"]) for a, b in zip(listed, from_gen, strict=True)
    )
    one_shot = IterableImages(iter(pics), lookback=2)
    assert one_shot.read(0, 4) == pics[:4]
    assert one_shot.read(2, 3) == pics[2:5]  # within the look-back cache
    with pytest.raises(ValueError, match="one-shot iterator"):
        one_shot.read(0, 1)


def test_unknown_layer_fails_before_anything_runs(vit, images):
    with pytest.raises(Exception, match=r"blocks\.2"):
        ActivationStream(vit, images, "blocks.2x")


def test_online_training_on_a_live_vit_with_resume(vit, images, tmp_path):
    """TopK, RA-SAE and MP-SAE from one stream; interrupted and resumed equals uninterrupted."""
    common = dict(
        sae=["topk", "rasae", "mp"],
        n_concepts=256,
        k=8,
        batch_size=64,
        buffer_tokens=512,
        image_batch_size=16,
        epochs=3,
        lr=3e-3,
        init_tokens=512,
        log_every=5,
        progress=False,
    )
    straight = train_sae(vit, "blocks.3", images, checkpoint_dir=str(tmp_path / "a"), **common)
    assert straight.steps == 3 * ((60 * 21) // 64)
    for name in ("topk", "rasae", "mp"):
        rows = [r for r in straight.metrics if r["name"] == name]
        assert rows[-1]["fvu"] < 0.6 and rows[-1]["fvu"] < rows[0]["fvu"], rows[-1]

    stream = ActivationStream(
        vit, images, "blocks.3", batch_size=64, buffer_tokens=512, image_batch_size=16, epochs=3
    )
    from probe_sae.saes import family_config
    from probe_sae.train import SAETarget

    def targets():
        return [
            SAETarget(n, "blocks.3", family_config(n, n_concepts=256, k=8))
            for n in ("topk", "rasae", "mp")
        ]

    cfg = TrainConfig(
        max_steps=straight.steps,
        lr=3e-3,
        init_tokens=512,
        log_every=5,
        progress=False,
        checkpoint_dir=str(tmp_path / "b"),
        checkpoint_every=7,
    )
    partial = Trainer(targets(), stream, cfg)
    # stop after 14 steps (2 checkpoints) by interrupting through the source, as Ctrl-C would
    original = stream.next_batch
    calls = {"n": 0}

    def interrupting():
        calls["n"] += 1
        if calls["n"] == 8 + 15:  # 8 batches of init sampling, then 14 training steps
            raise KeyboardInterrupt
        return original()

    stream.next_batch = interrupting
    with pytest.raises(KeyboardInterrupt):
        partial.run()
    resumed_stream = ActivationStream(
        vit, images, "blocks.3", batch_size=64, buffer_tokens=512, image_batch_size=16, epochs=3
    )
    resumed = Trainer(targets(), resumed_stream, cfg).run(resume=tmp_path / "b")
    for name, sae in straight.saes.items():
        for key, value in sae.state_dict().items():
            torch.testing.assert_close(
                resumed.saes[name].state_dict()[key], value, rtol=0, atol=1e-6, msg=f"{name}.{key}"
            )
