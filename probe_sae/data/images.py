"""Image sources: where the images fed to a model come from.

Every source hands out images by position, in a fixed order, so a stream over it can be
resumed exactly:

* :class:`ImageFolder`: image files under a folder, recursively (unreadable files are skipped
  and counted);
* :class:`TensorImages`: a (N, C, H, W) tensor: float pixels already preprocessed, or raw uint8
  images that the model's own preprocessing turns into pixels (see :mod:`probe_sae.data.pixels`);
* :class:`DatasetImages`: a ``torch.utils.data.Dataset`` whose items are images or
  ``(image, ...)`` tuples;
* :class:`IterableImages`: any iterable of PIL images; a list or any re-iterable can be sought
  by re-reading it, a one-shot iterator only forwards.

:func:`image_source` picks the right one for an object (any of `Images`). A source with no
images is refused when it is built, wherever its length is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from torch import Tensor

from probe_sae.data.pixels import check_float_pixels, check_integer_images, is_pil, to_batch

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
    from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

#: Where images come from, everything `image_source` reads: a folder path (image files under
#: it, recursively), a (N, C, H, W) tensor (preprocessed pixels or uint8 images), a map-style
#: ``Dataset`` of images or ``(image, ...)`` tuples, a Hugging Face ``datasets.Dataset`` or
#: ``IterableDataset``, an iterable of PIL images, one PIL image, or an `ImageSource`.
Images: TypeAlias = "str | Path | Tensor | Dataset | Iterable[PILImage] | PILImage | ImageSource"


__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetImages",
    "ImageFolder",
    "ImageSource",
    "Images",
    "IterableImages",
    "TensorImages",
    "image_source",
    "is_pil",
    "to_batch",
]


def _refuse_empty(what: str, fix: str) -> None:
    raise ValueError(f"{what} holds no images: {fix}")


class ImageSource:
    """Base class: ``len()`` (or ``None`` when unknown) and ``read(start, count)``."""

    #: number of images that could not be read so far
    skipped: int = 0

    def __len__(self) -> int:
        raise TypeError(f"{type(self).__name__} has no known length")

    @property
    def length(self) -> int | None:
        try:
            return len(self)
        except TypeError:
            return None

    def read(self, start: int, count: int) -> list[Any]:
        """Images ``start .. start+count-1`` (fewer at the end); unreadable ones are ``None``."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """How to point a person at image ``index`` (its path for files)."""
        return f"image {index}"


class ImageFolder(ImageSource):
    """Image files under ``root`` (recursive, sorted paths, common formats)."""

    def __init__(self, root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        exts = {e.lower() for e in extensions}
        self.paths = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in exts
        )
        if not self.paths:
            raise ValueError(f"no image files ({', '.join(sorted(exts))}) under {self.root}")
        self.skipped = 0
        self._seen_bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return str(self.paths[index])

    def read(self, start: int, count: int) -> list[Any]:
        from PIL import Image, UnidentifiedImageError

        out = []
        for i in range(start, min(start + count, len(self.paths))):
            try:
                with Image.open(self.paths[i]) as im:
                    out.append(im.convert("RGB"))
            except (OSError, UnidentifiedImageError, ValueError):
                if i not in self._seen_bad:
                    self._seen_bad.add(i)
                    self.skipped += 1
                out.append(None)
        return out


class TensorImages(ImageSource):
    """Images from a (N, C, H, W) tensor.

    Float tensors are pixels already preprocessed for the model (``model.preprocess(images)``);
    raw [0, 255] floats are refused with the fix. Integer tensors (uint8, or values in
    [0, 255]) are raw RGB, grayscale or RGBA images: the model's own preprocessing resizes and
    normalises them, as it does PIL images.
    """

    def __init__(self, images_NCHW: Tensor) -> None:
        shape = tuple(images_NCHW.shape)
        if images_NCHW.ndim != 4:
            extra = " (add the batch axis: x[None])" if images_NCHW.ndim == 3 else ""
            raise ValueError(f"an image tensor must be (N, C, H, W), got shape {shape}{extra}")
        if shape[0] == 0:
            _refuse_empty(f"the image tensor of shape {shape}", "give at least one image")
        if images_NCHW.is_floating_point():  # the first images now, every image when read
            check_float_pixels(images_NCHW[:64])
        elif images_NCHW.is_complex():
            raise ValueError("the image tensor is complex; give uint8 images or float pixels")
        else:
            check_integer_images(images_NCHW)
        self.images = images_NCHW

    def __len__(self) -> int:
        return self.images.shape[0]

    def read(self, start: int, count: int) -> list[Any]:
        return list(self.images[start : start + count])


class DatasetImages(ImageSource):
    """Images from a map-style dataset; tuple items contribute their first element."""

    def __init__(self, dataset: Dataset) -> None:
        if len(dataset) == 0:
            _refuse_empty(f"the dataset ({type(dataset).__name__})", "give one with images")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, start: int, count: int) -> list[Any]:
        items = [self.dataset[i] for i in range(start, min(start + count, len(self.dataset)))]
        return [it[0] if isinstance(it, (tuple, list)) else it for it in items]


class IterableImages(ImageSource):
    """Images from an iterable, read forwards.

    The last ``lookback`` images stay cached, so a stream can re-read the image that straddles
    two shuffle windows. Going further back re-reads a re-iterable (a list, a Dataset-like
    iterable) from the start; a one-shot iterator cannot go back and says so.
    """

    def __init__(self, iterable: Iterable[Any], lookback: int = 256) -> None:
        if isinstance(iterable, Sequence) and len(iterable) == 0:
            _refuse_empty(f"the {type(iterable).__name__} of images", "give at least one image")
        self.iterable = iterable
        self.one_shot = iter(iterable) is iterable
        self.lookback = lookback
        self._it: Iterator[Any] | None = None
        self._pos = 0
        self._recent: dict[int, Any] = {}

    def __len__(self) -> int:
        if isinstance(self.iterable, Sequence):
            return len(self.iterable)
        raise TypeError("this iterable has no known length")

    def _restart(self) -> None:
        if self._it is not None and self.one_shot:
            raise ValueError(
                "cannot go back in a one-shot iterator of images (needed to resume or to "
                "rewind past the shuffle buffer): pass a list, a Dataset or a folder instead"
            )
        self._it, self._pos, self._recent = iter(self.iterable), 0, {}

    def _next(self) -> tuple[bool, Any]:
        if self._it is None:
            self._restart()
        try:
            image = next(self._it)
        except StopIteration:
            return False, None
        self._recent[self._pos] = image
        self._recent.pop(self._pos - self.lookback, None)
        self._pos += 1
        return True, image

    def read(self, start: int, count: int) -> list[Any]:
        if self._it is None or (start < self._pos and start not in self._recent):
            self._restart()
        out = []
        for p in range(start, start + count):
            if p < self._pos:
                out.append(self._recent[p])
                continue
            while self._pos < p:  # skip forwards
                ok, _ = self._next()
                if not ok:
                    return out
            ok, image = self._next()
            if not ok:
                break
            out.append(image)
        return out


def _hf_kind(obj: object) -> str | None:
    """The Hugging Face ``datasets`` class ``obj`` is (``"Dataset"``, ``"IterableDataset"``,
    ``"DatasetDict"``...), or ``None``; told by the class's module, so ``datasets`` is not
    imported for other objects."""
    for cls in type(obj).__mro__:
        if cls.__module__.split(".")[0] == "datasets" and "Dataset" in cls.__name__:
            return cls.__name__
    return None


def image_source(images: Images) -> ImageSource:
    """The :class:`ImageSource` for a folder path, a tensor, a Dataset, a Hugging Face
    ``datasets.Dataset`` or ``IterableDataset`` (:func:`~probe_sae.data.hf.hf_images`: its one
    ``Image`` column, labels from its ``ClassLabel`` columns), an iterable of PIL images or one
    PIL image (see `Images`)."""
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, (str, Path)):
        return ImageFolder(images)
    if isinstance(images, Tensor):
        return TensorImages(images)
    if is_pil(images):
        return IterableImages([images])
    if _hf_kind(images) is not None:
        from probe_sae.data.hf import hf_images

        return hf_images(images)
    if (
        hasattr(images, "__getitem__")
        and hasattr(images, "__len__")
        and not isinstance(images, (list, tuple))
    ):
        return DatasetImages(images)
    if isinstance(images, Iterable):
        return IterableImages(images)
    raise TypeError(
        f"cannot read images from a {type(images).__name__}: pass a folder path, a (N, C, H, W) "
        "tensor, a torch Dataset, an iterable of PIL images or one PIL image"
    )
