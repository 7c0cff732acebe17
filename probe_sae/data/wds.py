"""Images from WebDataset shards: tar files whose members are grouped into samples by key
(``000123.jpg`` + ``000123.cls`` is one sample), read with the ``webdataset`` package.

Shards are local paths, brace patterns (``shards-{000..099}.tar``) or URLs: ``pipe:`` commands
and webdataset's own schemes through its ``gopen``, any other scheme (``s3://``, ``gs://``,
``hf://``, ``memory://``...) through ``fsspec``. The order is fixed: shards in the order given,
samples in tar order, so image ``i`` is always the same sample and a stream over the shards
resumes exactly.

Seeking is cheap once a shard has been read to its end: its number of samples is learned then,
and a later seek skips it whole (reopening only the shard that holds the position). Before
that, seeking reads forwards without decoding images. ``scan()`` reads every shard once (no
image decoded) to learn all of them, and the labels; only then (or with ``shard_lengths=``)
is the number of images known (``len()``), so it never changes in the middle of a run.

A sample whose image does not decode, or that has no image member, is ``None`` from ``read``
and counted in ``skipped``. A damaged tar file (truncated, not a tar) ends its shard where the
damage is, with a warning; the other shards are read as usual.

``webdataset`` is an optional dependency (``pip install "probe_sae[datasets]"``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from probe_sae.data._read import decode_image, require
from probe_sae.data.images import ImageSource
from probe_sae.data.labelled import ImageLabels, label_presence

__all__ = ["IMAGE_KEYS", "WebDatasetImages", "expand_shards"]

_WHAT = "reading WebDataset shards"

#: member extensions taken as the image of a sample, in order of preference
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pnm")


def _webdataset() -> Any:
    return require("webdataset", _WHAT)


def expand_shards(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """The shard URLs of a pattern (braces ``{000..099}``, several patterns joined by ``::``)
    or of a list of them, in order."""
    from_pattern = _webdataset().shardlists.expand_urls
    items = [urls] if isinstance(urls, (str, Path)) else list(urls)
    out: list[str] = []
    for item in items:
        out += from_pattern(str(item))
    return out


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return len(scheme) <= 1 or scheme == "file"  # "C:\\..." has a one-letter scheme


def _local_path(url: str) -> Path:
    parsed = urlparse(url)
    return Path(parsed.path) if parsed.scheme == "file" else Path(url)


def _open(url: str) -> Any:
    """A binary stream of shard ``url``: webdataset's ``gopen`` for local paths and ``pipe:``,
    ``fsspec`` for other schemes it knows, ``gopen`` again for the rest."""
    scheme = urlparse(url).scheme
    if not _is_local(url) and scheme != "pipe":
        try:
            import fsspec

            fsspec.get_filesystem_class(scheme)
        except (ImportError, ValueError):
            pass  # a scheme fsspec does not know: webdataset's own (curl, gsutil, ais...)
        else:
            return fsspec.open(url, "rb").open()
    gopen = _webdataset().gopen
    return getattr(gopen, "gopen", gopen)(url, "rb")


def _as_list(label: Any) -> list[str]:
    if label is None:
        return []
    return [str(v) for v in label] if isinstance(label, list) else [str(label)]


def _class_name(label: str, names: list[str], known: set[str]) -> str:
    """A label as one of ``names``: itself, or the name at its index."""
    if label not in known and label.isdigit() and int(label) < len(names):
        return names[int(label)]
    return label  # an unknown one is refused by label_presence, naming it


class WebDatasetImages(ImageSource):
    """Images (and labels) of WebDataset shards, in a fixed order, by position.

    Args:
        urls: a pattern (``"/data/shards-{000..099}.tar"``, ``"s3://bucket/s-{0..9}.tar"``) or
            a list of shard paths / URLs.
        image_key: the member extension of the image (``"jpg"``); default the first of
            `IMAGE_KEYS` a sample has.
        label_key: the member extension of the label (``"cls"``: a class index or name as
            text); ``None`` for no labels.
        classes: the class names, in order; a label is one of them or an index into them.
            Default: the labels seen (``0 .. max`` when they are all class indices).
        shard_lengths: the number of samples of each shard, when known (then ``len()`` works
            and seeks skip shards from the start).
        lookback: decoded images kept for re-reading.
    """

    def __init__(
        self,
        urls: str | Path | Sequence[str | Path],
        *,
        image_key: str | None = None,
        label_key: str | None = "cls",
        classes: Sequence[str] | None = None,
        shard_lengths: Sequence[int] | None = None,
        lookback: int = 64,
    ) -> None:
        self.urls = expand_shards(urls)
        if not self.urls:
            raise ValueError(f"the shard pattern {urls!r} names no shard: give tar files")
        missing = [u for u in self.urls if _is_local(u) and not _local_path(u).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the {len(self.urls)} shards do not exist (the first: "
                f"{', '.join(missing[:3])}): check the pattern, e.g. shards-{{000..099}}.tar"
            )
        self.image_key = image_key.lower() if image_key else None
        self.label_key = label_key.lower() if label_key else None
        self.classes = list(classes) if classes is not None else None
        if shard_lengths is not None:
            lengths = [int(n) for n in shard_lengths]
            if len(lengths) != len(self.urls) or min(lengths) < 0:
                raise ValueError(
                    f"shard_lengths gives {len(lengths)} counts for {len(self.urls)} shards: give "
                    "one number of samples (>= 0) per shard, in order"
                )
        self._lengths: list[int | None] = (
            list(lengths) if shard_lengths is not None else [None] * len(self.urls)
        )
        self._length_known = shard_lengths is not None
        self.lookback = int(lookback)
        self.skipped = 0
        self.damaged: dict[str, str] = {}  # shard url -> what was wrong with it
        self._seen_bad: set[int] = set()
        self._bad_names: dict[int, str] = {}
        self._recent: dict[int, Any] = {}
        # the cursor: the open shard, the next sample's index in it and position overall
        self._samples: Iterator[dict[str, Any]] | None = None
        self._shard, self._index, self._pos = -1, 0, 0
        self._label_values: list[Any] | None = None
        self._labels: ImageLabels | None = None
        self._parent: tuple[WebDatasetImages, list[int]] | None = None  # (source, its shards)

    # ---------------------------------------------------------------- size
    def __len__(self) -> int:
        if not self._length_known:
            raise TypeError(
                "the number of images of WebDataset shards is known once they are counted: call "
                "scan() first (reads every shard once, no image decoded) or pass shard_lengths="
            )
        return sum(n for n in self._lengths if n is not None)

    @property
    def shard_lengths(self) -> list[int | None]:
        """Samples per shard, ``None`` for shards not yet read to their end."""
        return list(self._lengths)

    def name(self, index: int) -> str:
        return self._bad_names.get(index, f"sample {index} of the WebDataset shards")

    # ---------------------------------------------------------------- reading
    def _shard_samples(self, shard: int) -> Iterator[dict[str, Any]]:
        """The samples of one shard, as raw member bytes by extension."""
        tariterators = _webdataset().tariterators
        url = self.urls[shard]
        stream = _open(url)

        def damaged(exn: Exception) -> bool:
            if url not in self.damaged:
                self.damaged[url] = reason = str(exn.args[0] if exn.args else exn)
                warnings.warn(
                    f"WebDataset shard {url} is damaged ({reason}); the samples after the damage "
                    "are left out. Rewrite the shard to read them.",
                    stacklevel=2,
                )
            return False  # stop reading this shard

        try:
            files = tariterators.tar_file_expander(
                [{"url": url, "stream": stream}], handler=damaged
            )
            yield from tariterators.group_by_keys(files, handler=damaged)
        finally:
            stream.close()

    def _open_shard(self, shard: int, position: int) -> None:
        self.close()
        self._samples = self._shard_samples(shard)
        self._shard, self._index, self._pos = shard, 0, position

    def close(self) -> None:
        """Close the open shard (a later ``read`` opens it again)."""
        if self._samples is not None:
            self._samples.close()  # type: ignore[attr-defined]
        self._samples = None

    def _next_sample(self) -> dict[str, Any] | None:
        """The sample at the cursor (then one further), across shard ends; ``None`` at the end."""
        while self._samples is not None:
            sample = next(self._samples, None)
            if sample is not None:
                self._index += 1
                self._pos += 1
                return sample
            self._lengths[self._shard] = self._index  # learned: later seeks skip this shard
            if self._shard + 1 < len(self.urls):
                self._open_shard(self._shard + 1, self._pos)
            else:
                self.close()
        return None

    def _locate(self, position: int) -> tuple[int, int] | None:
        """(shard, its first position) to read from to reach ``position``: the shard holding
        it, or the first shard of unknown length before it; ``None`` past the end."""
        offset = 0
        for shard, length in enumerate(self._lengths):
            if length is None or position < offset + length:
                return shard, offset
            offset += length
        return None

    def _seek(self, position: int) -> bool:
        """Put the cursor at ``position``; ``False`` when it is past the last sample."""
        if self._samples is not None and self._pos == position:
            return True
        where = self._locate(position)
        if where is None:
            return False
        shard, offset = where
        if not (self._samples is not None and self._shard == shard and self._pos <= position):
            self._open_shard(shard, offset)
        while self._pos < position:  # read forwards, nothing decoded
            if self._next_sample() is None:
                return False
        return True

    def _image_of(self, sample: dict[str, Any]) -> Any:
        if self.image_key is not None:
            return sample.get(self.image_key)
        for key in IMAGE_KEYS:
            if key in sample:
                return sample[key]
        for key, value in sample.items():  # "seg.png", "left.jpg"...
            if not key.startswith("__") and key.rsplit(".", 1)[-1] in IMAGE_KEYS:
                return value
        return None

    def read(self, start: int, count: int) -> list[Any]:
        out = []
        for p in range(start, start + count):
            if p in self._recent:
                out.append(self._recent[p])
                continue
            if not self._seek(p):
                break
            sample = self._next_sample()
            if sample is None:
                break
            image = decode_image(self._image_of(sample))
            if image is None and p not in self._seen_bad:
                self._seen_bad.add(p)
                self.skipped += 1
                key = self.image_key or "image"
                url, name = sample.get("__url__"), sample.get("__key__")
                self._bad_names[p] = f"{url} sample {name!r} ({key})"
            self._recent[p] = image
            self._recent.pop(p - self.lookback, None)
            out.append(image)
        return out

    # ---------------------------------------------------------------- labels
    def _label_of(self, sample: dict[str, Any]) -> Any:
        value = sample.get(self.label_key) if self.label_key else None
        if value is None:
            return None
        text = value.decode("utf-8").strip() if isinstance(value, bytes) else str(value).strip()
        if text.startswith("[") or (self.label_key or "").endswith("json"):  # several labels
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return text or None
            return parsed if isinstance(parsed, (list, int, str)) else None
        return text or None

    def scan(self) -> WebDatasetImages:
        """Read every shard once (no image decoded): learn its number of samples (``len()``
        then works) and the labels. Returns the source."""
        values: list[Any] = []
        for shard in range(len(self.urls)):
            self._open_shard(shard, sum(n or 0 for n in self._lengths[:shard]))
            count = 0
            for sample in self._samples:  # type: ignore[union-attr]
                values.append(self._label_of(sample))
                count += 1
            self._lengths[shard] = count
            self.close()
        self._length_known = True
        self._label_values = values
        return self

    def labels(self) -> ImageLabels | None:
        """(N, K) presence and class names from the label members (read by `scan` if not yet
        done); ``None`` when no sample has one. A shard of a source (`shard`) takes its rows of
        the whole source's labels, so every rank has the same classes, unless ``classes`` is set."""
        if self._labels is not None or self.label_key is None:
            return self._labels
        if self._parent is not None and self.classes is None:
            parent, shards = self._parent
            whole = parent.labels()
            if whole is None:
                return None
            offsets = [0]
            for n in parent.shard_lengths:
                offsets.append(offsets[-1] + (n or 0))
            rows = [i for s in shards for i in range(offsets[s], offsets[s + 1])]
            if not self._length_known:
                self._lengths = [parent.shard_lengths[s] for s in shards]
                self._length_known = True
            self._labels = whole.subset(rows)
            return self._labels
        if self._label_values is None:
            self.scan()
        rows = [_as_list(v) for v in self._label_values or []]
        if not any(rows):
            return None
        if self.classes is None:
            flat = [v for row in rows for v in row]
            if all(v.isdigit() for v in flat):  # class indices: column k is class k
                names = [str(k) for k in range(max(int(v) for v in flat) + 1)]
            else:
                names = sorted(set(flat))
        else:
            names = list(self.classes)
            known = set(names)
            rows = [[_class_name(v, names, known) for v in row] for row in rows]
        self._labels = label_presence(rows, names)
        return self._labels

    # ---------------------------------------------------------------- sharding
    def shard(self, rank: int, world_size: int) -> WebDatasetImages:
        """Rank ``rank``'s part of ``world_size``: whole shards, round-robin by shard index
        (shards ``rank``, ``rank + world_size``, ...)."""
        n = len(self.urls)
        if n < world_size:
            raise ValueError(
                f"{n} WebDataset shard(s) for {world_size} ranks: shards are split whole between "
                f"ranks, so write the data as at least {world_size} shards (a multiple of "
                f"{world_size} balances them), or run fewer ranks"
            )
        shards = list(range(rank, n, world_size))
        part = WebDatasetImages(
            [self.urls[s] for s in shards],
            image_key=self.image_key,
            label_key=self.label_key,
            classes=self.classes,
            shard_lengths=[self._lengths[s] or 0 for s in shards] if self._length_known else None,
            lookback=self.lookback,
        )
        part._parent = (self, shards)
        return part
