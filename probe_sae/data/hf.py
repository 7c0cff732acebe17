"""Image sources over Hugging Face ``datasets``: a map-style ``Dataset`` (random access) and a
streaming ``IterableDataset`` (forwards only).

The image column is the dataset's one ``Image`` feature unless named. Images are read undecoded
(``Image(decode=False)``) and decoded here, so an image that does not decode becomes ``None``
and is counted in ``skipped``, as in :class:`~probe_sae.data.images.ImageFolder`, instead of
stopping a stream.

Label columns (by default every ``ClassLabel`` and ``Sequence(ClassLabel)`` column) give
:class:`~probe_sae.data.labelled.ImageLabels`: a ``ClassLabel`` one-hot presence (N, n_classes),
a ``Sequence(ClassLabel)`` multi-hot presence, with the class names. A map-style dataset reads
the label columns alone (no image is decoded); a streaming one reads them in one pass.

``datasets`` is an optional dependency (``pip install "probe_sae[datasets]"``); this module
imports it only when a source is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from probe_sae.data._read import decode_image, require
from probe_sae.data.images import DatasetImages, ImageSource
from probe_sae.data.labelled import ImageLabels

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

__all__ = ["HFImages", "HFIterableImages", "hf_images", "hf_images_from_disk"]

_WHAT = "reading a Hugging Face dataset"


def _datasets() -> Any:
    return require("datasets", _WHAT)


@dataclass(frozen=True)
class _LabelColumn:
    name: str
    classes: list[str]
    multi: bool  # Sequence(ClassLabel): several classes per image


def _image_column(features: Any, given: str | None) -> str:
    """The image column: ``given`` (checked), or the dataset's one ``Image`` feature."""
    if features is None:
        if given is None:
            raise ValueError(
                "this dataset does not declare its features, so its image column cannot be "
                "found: name it (image_column='image')"
            )
        return given
    if given is not None:
        if given not in features:
            raise ValueError(f"no column {given!r} in the dataset; its columns: {list(features)}")
        return given
    images = [name for name, f in features.items() if isinstance(f, _datasets().Image)]
    if len(images) != 1:
        found = f"the Image columns {images}" if images else "no Image column"
        raise ValueError(
            f"the dataset has {found} among {list(features)}: name the image column "
            "(image_column='...')"
        )
    return images[0]


def _class_label_of(feature: Any) -> tuple[Any, bool] | None:
    """(the ClassLabel, multi-label?) of a ClassLabel or Sequence(ClassLabel) feature."""
    class_label = _datasets().ClassLabel
    if isinstance(feature, class_label):
        return feature, False
    inner = getattr(feature, "feature", None)
    if isinstance(inner, class_label):
        return inner, True
    return None


def _label_columns(
    features: Any, given: str | Sequence[str] | None, image_column: str
) -> list[_LabelColumn]:
    """The label columns: every ClassLabel-like column when ``given`` is None, else those."""
    if features is None:
        if given:
            raise ValueError(
                "this dataset does not declare its features, so its label columns have no class "
                "names: cast them, ds.cast_column('label', datasets.ClassLabel(names=[...]))"
            )
        return []
    if given is None:
        names = [n for n, f in features.items() if n != image_column and _class_label_of(f)]
    else:
        names = [given] if isinstance(given, str) else list(given)
    out = []
    for name in names:
        if name not in features:
            raise ValueError(
                f"no label column {name!r} in the dataset; its columns: {list(features)}"
            )
        found = _class_label_of(features[name])
        if found is None:
            raise ValueError(
                f"the label column {name!r} is {features[name]!r}, not a ClassLabel or a "
                f"Sequence of ClassLabel: encode it, ds = ds.class_encode_column({name!r}) "
                f"(or ds.cast_column({name!r}, datasets.ClassLabel(names=[...])))"
            )
        label, multi = found
        out.append(_LabelColumn(name, list(label.names), multi))
    return out


def _presence(columns: list[_LabelColumn], values: dict[str, list[Any]]) -> ImageLabels | None:
    """(N, K) presence over the label ``columns`` from their ``values`` (class indices)."""
    if not columns:
        return None
    blocks, names = [], []
    for col in columns:
        rows = values[col.name]
        presence_NK = torch.zeros(len(rows), len(col.classes))
        for i, value in enumerate(rows):
            indices = (value or []) if col.multi else [value]
            for k in indices:
                if k is not None and 0 <= int(k) < len(col.classes):  # -1: no label
                    presence_NK[i, int(k)] = 1.0
        blocks.append(presence_NK)
        prefix = f"{col.name}:" if len(columns) > 1 else ""
        names += [f"{prefix}{c}" for c in col.classes]
    return ImageLabels(torch.cat(blocks, dim=1), names)


def _undecoded(dataset: Any, column: str) -> Any:
    """``dataset`` with only ``column``, its images left as stored (bytes or paths)."""
    raw = dataset.select_columns([column])
    features = dataset.features
    if features is not None and isinstance(features[column], _datasets().Image):
        raw = raw.cast_column(column, _datasets().Image(decode=False))
    return raw


class HFImages(DatasetImages):
    """Images of a map-style Hugging Face ``datasets.Dataset``, by row.

    Args:
        dataset: a ``datasets.Dataset`` (not a ``DatasetDict``: pick a split, ``ds["train"]``).
        image_column: the column of images; default the one ``Image`` feature.
        label_columns: ``ClassLabel`` / ``Sequence(ClassLabel)`` columns for ``labels()``;
            default every such column, ``()`` for none.
    """

    def __init__(
        self,
        dataset: Dataset,
        image_column: str | None = None,
        label_columns: str | Sequence[str] | None = None,
    ) -> None:
        datasets = _datasets()
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"HFImages reads a datasets.Dataset, got a {type(dataset).__name__}: use "
                "HFIterableImages for an IterableDataset, or hf_images(ds) for either"
            )
        super().__init__(dataset)
        self.image_column = _image_column(dataset.features, image_column)
        self.label_columns = _label_columns(dataset.features, label_columns, self.image_column)
        self._raw = _undecoded(dataset, self.image_column).with_format(None)
        self.skipped = 0
        self._seen_bad: set[int] = set()
        self._labels: ImageLabels | None = None

    def name(self, index: int) -> str:
        return f"row {index} of the dataset (column {self.image_column!r})"

    def read(self, start: int, count: int) -> list[Any]:
        stop = min(start + count, len(self))
        if start >= stop:
            return []
        values = self._raw[start:stop][self.image_column]
        out = []
        for i, value in zip(range(start, stop), values, strict=True):
            image = decode_image(value)
            if image is None and i not in self._seen_bad:
                self._seen_bad.add(i)
                self.skipped += 1
            out.append(image)
        return out

    def labels(self) -> ImageLabels | None:
        """(N, K) presence and class names from the label columns (no image is decoded);
        ``None`` without label columns."""
        if self._labels is None and self.label_columns:
            names = [c.name for c in self.label_columns]
            table = self.dataset.select_columns(names).with_format(None)
            self._labels = _presence(self.label_columns, {n: list(table[n]) for n in names})
        return self._labels


class HFIterableImages(ImageSource):
    """Images of a streaming Hugging Face ``datasets.IterableDataset``, read forwards.

    Seeking forwards reads on (without decoding images); seeking back re-iterates from
    ``dataset.skip(start)``. The last ``lookback`` images stay cached, so the image a stream
    reads again (where it measures tokens, where a shuffle window ends) costs nothing.

    Args:
        dataset: a ``datasets.IterableDataset``.
        image_column: the column of images; default the one ``Image`` feature.
        label_columns: ``ClassLabel`` / ``Sequence(ClassLabel)`` columns for ``labels()``;
            default every such column, ``()`` for none.
        length: the number of examples, when known (endless and image-shuffled streams need
            it); unknown by default.
        lookback: decoded images kept for re-reading.
    """

    def __init__(
        self,
        dataset: IterableDataset,
        image_column: str | None = None,
        label_columns: str | Sequence[str] | None = None,
        *,
        length: int | None = None,
        lookback: int = 256,
    ) -> None:
        datasets = _datasets()
        if not isinstance(dataset, datasets.IterableDataset):
            raise TypeError(
                f"HFIterableImages reads a datasets.IterableDataset, got a "
                f"{type(dataset).__name__}: use HFImages for a Dataset, or hf_images(ds) for either"
            )
        if length is not None and length <= 0:
            raise ValueError(f"length must be positive (the number of examples), got {length}")
        self.dataset, self.length_hint, self.lookback = dataset, length, int(lookback)
        self.image_column = _image_column(dataset.features, image_column)
        self.label_columns = _label_columns(dataset.features, label_columns, self.image_column)
        self._raw = _undecoded(dataset, self.image_column)
        self.skipped = 0
        self._seen_bad: set[int] = set()
        self._it: Any = None
        self._pos = 0  # position of the next example of self._it
        self._recent: dict[int, Any] = {}
        self._labels: ImageLabels | None = None

    def __len__(self) -> int:
        if self.length_hint is None:
            raise TypeError(
                "this IterableDataset has no known length: pass length= to HFIterableImages"
            )
        return self.length_hint

    def name(self, index: int) -> str:
        return f"example {index} of the streamed dataset (column {self.image_column!r})"

    def _restart(self, at: int) -> None:
        self._it = iter(self._raw.skip(at) if at else self._raw)
        self._pos = at

    def _next(self) -> tuple[bool, Any]:
        """The next stored image (undecoded) and whether there was one."""
        try:
            example = next(self._it)
        except StopIteration:
            return False, None
        self._pos += 1
        return True, example[self.image_column]

    def read(self, start: int, count: int) -> list[Any]:
        out = []
        for p in range(start, start + count):
            if p in self._recent:
                out.append(self._recent[p])
                continue
            if self._it is None or p < self._pos:
                self._restart(p)
            ended = False
            while self._pos < p and not ended:  # seek forwards, nothing decoded
                ended = not self._next()[0]
            ok, value = (False, None) if ended else self._next()
            if not ok:
                break
            image = decode_image(value)
            if image is None and p not in self._seen_bad:
                self._seen_bad.add(p)
                self.skipped += 1
            self._recent[p] = image
            self._recent.pop(p - self.lookback, None)
            out.append(image)
        return out

    def labels(self) -> ImageLabels | None:
        """(N, K) presence and class names, read in one pass over the label columns (images
        are not decoded); ``None`` without label columns."""
        if self._labels is None and self.label_columns:
            names = [c.name for c in self.label_columns]
            values: dict[str, list[Any]] = {n: [] for n in names}
            for example in self.dataset.select_columns(names):
                for n in names:
                    values[n].append(example[n])
            self._labels = _presence(self.label_columns, values)
        return self._labels

    def shard(self, rank: int, world_size: int) -> HFIterableImages:
        """This rank's part (``datasets.distributed.split_dataset_by_node``: whole shards of
        the dataset when their number divides by ``world_size``, else every
        ``world_size``-th example); its labels are its own examples'."""
        from datasets.distributed import split_dataset_by_node

        part = split_dataset_by_node(self.dataset, rank=rank, world_size=world_size)
        return HFIterableImages(
            part,
            self.image_column,
            [c.name for c in self.label_columns],
            lookback=self.lookback,
        )


def hf_images(
    dataset: Dataset | IterableDataset,
    image_column: str | None = None,
    label_columns: str | Sequence[str] | None = None,
    **options: Any,
) -> HFImages | HFIterableImages:
    """The source for a ``datasets.Dataset`` (:class:`HFImages`) or ``IterableDataset``
    (:class:`HFIterableImages`; ``options`` go to it: ``length=``, ``lookback=``)."""
    datasets = _datasets()
    if isinstance(dataset, datasets.IterableDataset):
        return HFIterableImages(dataset, image_column, label_columns, **options)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise TypeError(
            f"a {type(dataset).__name__} holds the splits {list(dataset)}: pick one, "
            f"ds[{next(iter(dataset), 'train')!r}]"
        )
    if options:
        raise TypeError(f"{sorted(options)} only apply to an IterableDataset")
    return HFImages(dataset, image_column, label_columns)


def hf_images_from_disk(
    path: str | Path,
    image_column: str | None = None,
    label_columns: str | Sequence[str] | None = None,
) -> HFImages:
    """:class:`HFImages` over a dataset folder written by ``Dataset.save_to_disk`` (read with
    ``datasets.load_from_disk``, memory-mapped)."""
    datasets = _datasets()
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no dataset folder {folder}: give a folder written by Dataset.save_to_disk"
        )
    try:
        dataset = datasets.load_from_disk(str(folder))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{folder} is not a dataset written by Dataset.save_to_disk ({err})"
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        splits = list(dataset)
        raise ValueError(
            f"{folder} holds the splits {splits}: name one, {folder / (splits[0] if splits else 'train')}"
        )
    return HFImages(dataset, image_column, label_columns)
