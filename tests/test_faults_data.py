"""Bad image inputs and interrupted reads (issue 19): each bad input raises an error that names
the fix, unreadable images are reported, uint8 images work, and DataLoader workers never outlive
an interrupted or closed stream. On the organism (a real ViT, offline) and its concept world."""

from __future__ import annotations

import gc
import multiprocessing
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import probe_sae
from probe_sae.data.images import TensorImages
from probe_sae.data.loader import fork_available
from probe_sae.organism import generate
from probe_sae.stream.activations import ActivationStream

pytestmark = pytest.mark.usefixtures("one_thread")
needs_fork = pytest.mark.skipif(not fork_available(), reason="DataLoader workers need fork")

SMALL = dict(batch_size=32, buffer_tokens=128, image_batch_size=4)


@pytest.fixture(scope="module")
def model():
    return probe_sae.load_model("organism")


@pytest.fixture(scope="module")
def pixels():
    """(16, 3, 64, 64) float pixels in [0, 1], the organism's input."""
    return generate(16).images


def _png(pixels_CHW: torch.Tensor, path) -> None:
    array = (pixels_CHW.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path, pixels):
    """16 PNG files of the concept world, plus two broken files (03x.png and 09x.png)."""
    for i, image in enumerate(pixels):
        _png(image, tmp_path / f"{i:02}.png")
    (tmp_path / "03x.png").write_bytes(b"not an image")
    (tmp_path / "09x.png").write_bytes(b"\x89PNG truncated")
    return tmp_path


def _drain(stream: ActivationStream) -> list[dict[str, torch.Tensor]]:
    out = []
    while (batch := stream.next_batch()) is not None:
        out.append(batch)
    return out


def _children() -> set[int]:
    """PIDs of this process's live child processes (finished ones are reaped first)."""
    return {p.pid for p in multiprocessing.active_children()}


def _alive(pid: int) -> bool:
    multiprocessing.active_children()  # reap finished children, so they stop answering
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    "images",
    [torch.empty(0, 3, 64, 64), [], torch.utils.data.TensorDataset(torch.empty(0, 3, 64, 64))],
    ids=["empty-tensor", "empty-list", "empty-dataset"],
)
def test_empty_inputs_are_refused_before_training(model, images):
    with pytest.raises(ValueError, match=r"holds no images.*(give at least one|give one with)"):
        probe_sae.train_sae(model, "blocks.2", images, batch_size=64, progress=False)


def test_an_empty_iterator_or_an_unreadable_folder_says_so(model, tmp_path):
    stream = ActivationStream(model, iter([]), "blocks.2", **SMALL)
    with pytest.raises(ValueError, match="gave no image: pass a non-empty"):
        stream.next_batch()
    with pytest.raises(ValueError, match="gave no image"):
        ActivationStream(model, iter([]), "blocks.2", **SMALL).tokens_per_image()

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"broken")
    first = str(tmp_path / "a.png")
    with pytest.raises(ValueError, match=f"none of the images could be read.*{first}"):
        probe_sae.train_sae(model, "blocks.2", str(tmp_path), batch_size=64, progress=False)
    with pytest.raises(ValueError, match=f"2 unreadable, the first: {first}"):
        ActivationStream(model, str(tmp_path), "blocks.2", **SMALL).next_batch()


def test_float_images_in_0_255_are_refused_with_the_fix(model, pixels):
    raw = pixels * 255
    with pytest.raises(ValueError, match=r"up to 25\d.*x\.to\(torch\.uint8\).*model\.preprocess"):
        probe_sae.train_sae(model, "blocks.2", raw, batch_size=64, progress=False)
    # from a Dataset (checked as each image is read), too
    stream = ActivationStream(model, torch.utils.data.TensorDataset(raw), "blocks.2", **SMALL)
    with pytest.raises(ValueError, match="raw \\[0, 255\\] pixels"):
        stream.next_batch()
    nan = pixels.clone()
    nan[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite pixel values"):
        TensorImages(nan)


def test_uint8_and_integer_images_go_through_the_models_preprocessing(model, pixels):
    raw_u8 = (pixels * 255).round().to(torch.uint8)
    as_float = raw_u8.float() / 255  # what the organism's preprocessing makes of them
    kw = dict(SMALL, shuffle_images=True, seed=3)
    expected = _drain(ActivationStream(model, as_float, "blocks.2", **kw))
    for images in (raw_u8, raw_u8.long()):
        got = _drain(ActivationStream(model, images, "blocks.2", **kw))
        assert len(got) == len(expected) == 16 * 69 // 32
        pairs = zip(got, expected, strict=True)
        assert all(torch.equal(a["blocks.2"], b["blocks.2"]) for a, b in pairs)


@pytest.mark.parametrize(
    ("images", "error", "fix"),
    [
        (torch.full((2, 3, 64, 64), 300), ValueError, r"clamp\(0, 255\)\.to\(torch\.uint8\)"),
        (torch.zeros(2, 64, 64, 3, dtype=torch.uint8), ValueError, r"permute\(0, 3, 1, 2\)"),
        (torch.zeros(3, 64, 64), ValueError, r"add the batch axis: x\[None\]"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.bool), ValueError, "give uint8 images"),
        (["photo.png"], TypeError, r"PIL\.Image\.open\(path\)\.convert\('RGB'\)"),
        ([np.zeros((64, 64, 3), np.uint8)], TypeError, r"PIL\.Image\.fromarray\(array\)"),
    ],
    ids=["int-300", "channels-last", "no-batch-axis", "bool", "paths", "numpy"],
)
def test_malformed_images_name_the_fix(model, images, error, fix):
    with pytest.raises(error, match=fix):
        probe_sae.train_sae(model, "blocks.2", images, batch_size=64, progress=False)


# ------------------------------------------------------------------------ unreadable images
def test_unreadable_images_give_one_warning_naming_count_and_first(model, folder):
    stream = ActivationStream(model, str(folder), "blocks.2", epochs=2, **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _drain(stream)
        stream.close()
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1, messages
    assert "skipped 2 unreadable image(s) of 18" in messages[0]
    assert str(folder / "03x.png") in messages[0]
    assert stream.skipped_images == 4  # counted on every pass

    # stopped inside its first pass (as a run with max_steps is): the warning comes on close()
    stream = ActivationStream(model, str(folder), "blocks.2", **dict(SMALL, buffer_tokens=400))
    with pytest.warns(UserWarning, match="skipped 1 unreadable image.*03x.png"):
        stream.next_batch()
        stream.close()


# ------------------------------------------------------------------------------- workers
@needs_fork
def test_keyboard_interrupt_in_the_forward_stops_the_workers(model, folder):
    stream = ActivationStream(model, str(folder), "blocks.2", num_workers=2, **SMALL)
    before, workers, calls = _children(), set(), {"n": 0}

    def interrupt(module, args):
        calls["n"] += 1
        workers.update(_children() - before)
        if calls["n"] == 3:  # Ctrl-C during the third forward
            raise KeyboardInterrupt

    handle = model.module.blocks[0].register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            _drain(stream)
    finally:
        handle.remove()
    traceback = caught.value.__traceback__  # kept, as Jupyter keeps the last traceback
    assert traceback is not None and len(workers) == 2
    assert not [pid for pid in workers if _alive(pid)]
    # the stream reads on afterwards, with new workers, from where it stopped; the batch read
    # twice does not count its unreadable image twice
    assert stream.next_batch() is not None
    with pytest.warns(UserWarning, match="skipped 2 unreadable image"):
        stream.close()
    assert stream.skipped_images == 2


class _FailingImages(torch.utils.data.Dataset):
    """Float pixel images; reading image ``fail_at`` raises (a disk that went away)."""

    def __init__(self, pixels: torch.Tensor, fail_at: int) -> None:
        self.pixels, self.fail_at = pixels, fail_at

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == self.fail_at:
            raise OSError(f"image {index} went away")
        return self.pixels[index]


@needs_fork
def test_a_failing_read_in_a_worker_stops_the_workers(model, pixels):
    before = _children()
    stream = ActivationStream(model, _FailingImages(pixels, 9), "blocks.2", num_workers=2, **SMALL)
    with pytest.raises(OSError, match="image 9 went away") as caught:
        _drain(stream)
    assert "DataLoader worker" in str(caught.value)  # read in a worker, kept referenced here
    assert not (_children() - before)


@needs_fork
def test_close_and_garbage_collection_stop_the_workers(model, folder):
    before = _children()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _drain(ActivationStream(model, str(folder), "blocks.2", **SMALL))
        stream = ActivationStream(model, str(folder), "blocks.2", num_workers=2, epochs=2, **SMALL)
        first = stream.next_batch()
        workers = _children() - before
        assert len(workers) == 2
        stream.close()
        assert not [pid for pid in workers if _alive(pid)]
        rest = [stream.next_batch() for _ in plain[1:]]  # closing is not the end: new workers
        pairs = zip(rest, plain[1:], strict=True)
        same = [torch.equal(a["blocks.2"], b["blocks.2"]) for a, b in pairs]
        assert torch.equal(first["blocks.2"], plain[0]["blocks.2"]) and all(same)
        stream.next_batch()  # the second pass, with new workers
        workers = _children() - before
        assert workers
        del stream
        gc.collect()
    assert not [pid for pid in workers if _alive(pid)]
