"""Known labels of images, and a folder of images with a label file.

Labels are kept as *presence*: an (N, K) float tensor of 0/1, row i marking the K classes (or
objects) present in image i, with the K class names. One class per image gives one-hot rows,
several give multi-hot rows, none a row of zeros. This is what the report's ground-truth naming
and :func:`~probe_sae.interventions.spliced_fidelity` take (``labels=presence``).

:class:`LabelledFolder` reads the image files under a folder (as
:class:`~probe_sae.data.images.ImageFolder`, in the same order) with a label file at paths
relative to the folder:

* CSV with a header row and the columns ``path,label``; a path on several rows has several
  labels;
* JSON, one object ``{"relative/path.jpg": "label"}`` or ``{"relative/path.jpg": ["a", "b"]}``.

Every image must have an entry (an empty label or ``[]`` says "no class"); the first missing
ones are named in the error.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probe_sae.data.images import IMAGE_EXTENSIONS, ImageFolder

#: label files a folder may hold at its root, looked for in this order
LABEL_FILES = ("labels.csv", "labels.json")

__all__ = [
    "LABEL_FILES",
    "ImageLabels",
    "LabelledFolder",
    "find_label_file",
    "image_labels",
    "label_presence",
    "read_label_file",
]


@dataclass(frozen=True)
class ImageLabels:
    """The labels of N images: ``presence`` (N, K) float 0/1 and the K class ``names``."""

    presence: Tensor
    """(N, K) float32: 1 where class k is present in image i."""
    names: list[str]
    """The K class names, one per column of ``presence``."""

    def __post_init__(self) -> None:
        if self.presence.ndim != 2 or self.presence.shape[1] != len(self.names):
            raise ValueError(
                f"presence of shape {tuple(self.presence.shape)} for {len(self.names)} names: "
                "give (N, K) presence and K names"
            )

    def __len__(self) -> int:
        return self.presence.shape[0]

    def subset(self, indices: Sequence[int]) -> ImageLabels:
        """The labels of the images at ``indices`` (a shard, a selection), same classes."""
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        return ImageLabels(self.presence[rows], list(self.names))

    def class_indices(self) -> Tensor | None:
        """(N,) class index of each image when every image has exactly one class, else
        ``None`` (multi-label or unlabelled images: use ``presence``)."""
        counts = self.presence.sum(dim=1)
        if not bool((counts == 1).all()):
            return None
        return self.presence.argmax(dim=1)


def _class_key(name: str) -> tuple[int, int | str]:
    """Sort numbers numerically, before names."""
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)


def label_presence(
    labels: Sequence[str | int | Iterable[str | int] | None],
    names: Sequence[str] | None = None,
) -> ImageLabels:
    """(N, K) presence from one entry per image: a label, several labels, or ``None`` / ``[]``.

    Labels are compared as strings. ``names`` fixes the classes and their order (a label
    outside it is an error); by default the distinct labels, numbers in numeric order first.
    """
    rows: list[list[str]] = []
    for entry in labels:
        if entry is None:
            rows.append([])
        elif isinstance(entry, (str, int)):
            rows.append([str(entry)])
        else:
            rows.append([str(e) for e in entry])
    if names is None:
        names = sorted({name for row in rows for name in row}, key=_class_key)
    column = {name: k for k, name in enumerate(names)}
    unknown = sorted({name for row in rows for name in row if name not in column})
    if unknown:
        raise ValueError(
            f"labels {unknown[:5]} are not among the {len(column)} class names given: add them "
            "to the names, or leave names out to take every label seen"
        )
    presence_NK = torch.zeros(len(rows), len(column))
    for i, row in enumerate(rows):
        for name in row:
            presence_NK[i, column[name]] = 1.0
    return ImageLabels(presence_NK, list(names))


def image_labels(source: Any) -> ImageLabels | None:
    """The labels an image source knows (its ``labels()``), or ``None`` for unlabelled ones.

    For a WebDataset this reads every shard once (images not decoded)."""
    read = getattr(source, "labels", None)
    return read() if callable(read) else None


def find_label_file(root: str | Path) -> Path | None:
    """The first of `LABEL_FILES` at the root of ``root``, or ``None``."""
    for name in LABEL_FILES:
        path = Path(root) / name
        if path.is_file():
            return path
    return None


def _key(path: str) -> str:
    """A label file's path as a relative POSIX path (``./a\\b.jpg`` → ``a/b.jpg``)."""
    key = path.strip().replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def read_label_file(path: str | Path) -> dict[str, list[str]]:
    """``{relative path: [labels]}`` from a CSV (``path,label``) or JSON label file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no label file {path}: give a .csv or .json label file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{path} holds a JSON {type(data).__name__}; write one object "
                '{"relative/path.jpg": "label" or ["label", ...]}'
            )
        out: dict[str, list[str]] = {}
        for key, value in data.items():
            if value is None:
                labels: list[str] = []
            elif isinstance(value, (str, int)):
                labels = [str(value)]
            elif isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
                labels = [str(v) for v in value]
            else:
                raise ValueError(
                    f"{path}: the entry for {key!r} is {value!r}; write a label or a list of labels"
                )
            out[_key(key)] = labels
        return out
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: label files are .csv (columns path,label) or .json")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "path" not in columns or "label" not in columns:
            raise ValueError(
                f"{path} has the columns {columns}; a CSV label file has a header row with the "
                "columns path,label"
            )
        out = {}
        for row in reader:
            row = {k.strip(): v for k, v in row.items() if k is not None}
            labels = out.setdefault(_key(row["path"] or ""), [])
            if (row["label"] or "").strip():
                labels.append(row["label"].strip())
        return out


class LabelledFolder(ImageFolder):
    """Image files under ``root`` (as :class:`ImageFolder`) with the labels of a label file.

    Args:
        root: the folder; image paths in the label file are relative to it.
        labels_file: a CSV (``path,label``) or JSON label file; default the ``labels.csv`` or
            ``labels.json`` at the root (see `LABEL_FILES`).
        extensions: the image file extensions read.

    ``labels()`` gives the :class:`ImageLabels` in the folder's image order.
    """

    def __init__(
        self,
        root: str | Path,
        labels_file: str | Path | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__(root, extensions)
        found = find_label_file(self.root) if labels_file is None else Path(labels_file)
        if found is None:
            raise FileNotFoundError(
                f"no label file at the root of {self.root}: write labels.csv (path,label) or "
                "labels.json there, or pass labels_file="
            )
        self.labels_file = found
        entries = read_label_file(found)
        keys = [p.relative_to(self.root).as_posix() for p in self.paths]
        missing = [k for k in keys if k not in entries]
        if missing:
            raise ValueError(
                f"{len(missing)} of the {len(keys)} images under {self.root} have no entry in "
                f"{found} (the first: {', '.join(missing[:5])}): add a row for each (an empty "
                "label for no class), with paths relative to the folder"
            )
        unused = sorted(set(entries) - set(keys))
        if unused:
            warnings.warn(
                f"{found} names {len(unused)} file(s) that are not images under {self.root} "
                f"(the first: {', '.join(unused[:5])}); their labels are ignored",
                stacklevel=2,
            )
        self._labels = label_presence([entries[k] for k in keys])

    def labels(self) -> ImageLabels:
        """(N, K) presence and class names, in the folder's image order."""
        return self._labels
