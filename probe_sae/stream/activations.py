"""``ActivationStream``: images → model layer(s) → shuffled batches of tokens.

Images are read in order from an :class:`~probe_sae.data.images.ImageSource`, run through the
model with capture hooks (the forward stops after the deepest hooked layer), and the selected
tokens of every hooked layer fill a *shuffle window* of ``buffer_tokens`` tokens. Each window
is permuted with a generator seeded by (seed, epoch, window), so tokens of one image are spread
over the whole window and never arrive together, and batches of ``batch_size`` tokens are
served from it. Only one window is ever held in memory.

Because a window is a pure function of where it starts (image, token within that image) and
of the seed, the stream's position is a handful of integers: ``state_dict()`` /
``load_state_dict()`` let a training run resume on exactly the batches it would have seen.

Unreadable images are skipped and counted (``skipped_images``); a stream that skipped some says
so once, in a warning naming how many and the first of them, at the end of its first pass over
the images or when it is closed. A source without a single readable image is an error.
DataLoader workers (``num_workers``) stop on :meth:`ActivationStream.close`, on garbage
collection, and whenever reading a batch raises (a KeyboardInterrupt included).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from probe_sae.allocator import on_cpu, tune_cpu_allocator
from probe_sae.config import replace_fields
from probe_sae.data.images import Images, ImageSource, image_source, to_batch
from probe_sae.data.loader import PrefetchingReader, resolve_workers
from probe_sae.hooks import capture
from probe_sae.models import VisionModel
from probe_sae.models.layout import TokenSelection
from probe_sae.stream.config import StreamConfig

_MIX = 1_000_003


@dataclass
class _Captured:
    """One captured image batch: its readable images' tokens, per layer key."""

    key: tuple[int, int]  # (epoch, position of its first image)
    n_read: int  # images read, readable or not
    positions: list[int]  # position of each readable image
    per_image: dict[str, Tensor]  # layer key -> (n_readable, tokens per image, d)
    tokens_per_image: int
    token_index: Tensor | None  # (tokens per image,) position in the layer's token axis


def _window_seed(seed: int, epoch: int, window: int) -> int:
    return ((seed * _MIX + epoch) * _MIX + window) % (2**63 - 1)


def _no_tokens_message(
    source: ImageSource, skipped: int, first_bad: str | None, read: int = 0, tokens: Any = None
) -> str:
    """Why a pass over ``source`` gave no token, and what to do about it."""
    if read:
        return (
            f"the token selection {tokens!r} keeps no token of these images: choose tokens= "
            "among 'all', 'cls', 'patches', 'registers' or token indices (model.layout lists "
            "the tokens)"
        )
    if skipped:
        return (
            f"none of the images could be read ({skipped} unreadable, the first: {first_bad}); "
            "check the files (PIL.Image.open(path).convert('RGB') must work on them) or point "
            "the stream at other images"
        )
    return (
        f"the image source ({type(source).__name__}) gave no image: pass a non-empty folder, "
        "tensor, Dataset or list of PIL images"
    )


class ActivationStream:
    """A resumable :class:`~probe_sae.stream.tokens.TokenSource` over a live model.

    Args:
        model: the hooked model (``load_model`` / ``wrap`` / the organism).
        images: a folder path, a (N, C, H, W) tensor, a Dataset or an iterable of PIL images.
        layers: one layer (name, ``"blocks.i"`` or block index) or several; batches are keyed
            by the layer as given (an index ``i`` becomes ``"blocks.i"``).
        config: token selection, batching, shuffling and passes (:class:`StreamConfig`).
        provenance: add ``"image_index"`` (position in the image source) and ``"token_index"``
            (position in the layer's token axis) to every batch.
        fields: :class:`StreamConfig` fields that override ``config`` (``batch_size=256``).

    Example: ``ActivationStream(model, "photos/", "blocks.8", batch_size=4096, epochs=2)``.

    ``close()`` (or leaving a ``with ActivationStream(...) as stream:`` block) stops its
    DataLoader workers; reading on afterwards starts new ones.
    """

    def __init__(
        self,
        model: VisionModel,
        images: Images,
        layers: str | int | Sequence[str | int],
        config: StreamConfig | None = None,
        *,
        provenance: bool = False,
        **fields: Any,
    ) -> None:
        config = replace_fields(config or StreamConfig(), fields)
        self.config = config
        model_on_cpu = on_cpu(getattr(model, "device", None))
        if model_on_cpu:
            tune_cpu_allocator()

        self.model, self.source = model, image_source(images)
        specs = [layers] if isinstance(layers, (str, int)) else list(layers)
        if not specs:
            raise ValueError("give at least one layer; model.layers() lists them")
        self.layer_keys = [f"blocks.{s}" if isinstance(s, int) else s for s in specs]
        self._widths = {
            key: int(model.layer_info(spec).shape[-1])
            for key, spec in zip(self.layer_keys, specs, strict=True)
        }
        self.layer_specs = dict(zip(self.layer_keys, specs, strict=True))
        self.tokens: TokenSelection = config.tokens
        self.batch_size, self.image_batch_size = config.batch_size, config.image_batch_size
        self.buffer_tokens = -(-max(config.buffer_tokens, self.batch_size) // self.batch_size) * (
            self.batch_size
        )
        epochs, shuffle_images = config.epochs, config.shuffle_images
        if (epochs is None or shuffle_images) and self.source.length is None:
            raise ValueError(
                "endless or image-shuffled streams need a source of known length (a list, "
                "Dataset, folder or tensor)"
            )
        self.epochs, self.shuffle_images, self.seed = epochs, shuffle_images, config.seed
        self.provenance = provenance
        self.drop_last = config.drop_last
        self.num_workers = resolve_workers(config.num_workers, self.source, not model_on_cpu)
        self._reader = (
            PrefetchingReader(
                self.source, model.preprocess, self.image_batch_size, self.num_workers
            )
            if self.num_workers
            else None
        )
        # position: the current window's start and the next batch within it
        self.epoch = self.window = self.cursor = self.offset = self.batch_index = 0
        self._pool: dict[str, Tensor] | None = None
        self._next_start: tuple[int, int] = (0, 0)
        self._last_window = False
        self._carry: _Captured | None = None
        self.images_read = self.skipped_images = 0
        self._first_unreadable: str | None = None
        self._unreadable: tuple[int, set[int]] = (0, set())  # (epoch, its unreadable indices)
        self._warned_unreadable = False
        self._tokens_per_image: int | None = None
        self._finalizer = weakref.finalize(self, self._reader.close) if self._reader else None

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the DataLoader worker processes (if any) and report unreadable images."""
        if self._reader is not None:
            self._reader.close()
        self._warn_unreadable(stacklevel=3)

    def __enter__(self) -> ActivationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _warn_unreadable(self, stacklevel: int) -> None:
        """Once per stream: how many images were skipped as unreadable, and the first."""
        if self.skipped_images and not self._warned_unreadable:
            self._warned_unreadable = True
            distinct = len(self._unreadable[1])
            length = self.source.length
            warnings.warn(
                f"ActivationStream skipped {distinct} unreadable image(s)"
                f"{'' if length is None else f' of {length}'} (the first: "
                f"{self._first_unreadable}); stream.skipped_images counts them on every pass. "
                "Remove or repair those files to train on every image.",
                stacklevel=stacklevel,
            )

    # ---------------------------------------------------------------- protocol
    def widths(self) -> dict[str, int]:
        return dict(self._widths)

    def describe(self, key: str) -> dict[str, Any]:
        """Where the tokens of ``key`` come from, as saved in an SAE's ``provenance``: the model
        spec, whether its weights are a random initialisation and the seed that rebuilds them
        (``load_model(spec, seed=seed)``; ``None`` for loaded weights), the layer and tokens."""
        tokens = self.tokens
        if isinstance(tokens, Tensor):
            tokens = tokens.tolist()
        elif not isinstance(tokens, str):
            tokens = list(tokens)
        return {
            "model": getattr(self.model, "spec", None),
            "model_name": getattr(self.model, "name", None),
            "random_weights": bool(getattr(self.model, "random_weights", False)),
            "seed": getattr(self.model, "seed", None),
            "layer": self.model.resolve(self.layer_specs[key]),
            "tokens": tokens,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "window": self.window,
            "cursor": self.cursor,
            "offset": self.offset,
            "batch": self.batch_index,
            "seed": self.seed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"the checkpoint's stream used seed {state['seed']}, this one uses {self.seed}"
            )
        where = (
            int(state["epoch"]),
            int(state["window"]),
            int(state["cursor"]),
            int(state["offset"]),
        )
        if where != (self.epoch, self.window, self.cursor, self.offset):
            self.epoch, self.window, self.cursor, self.offset = where
            self._pool = None  # refilled (recomputed) on the next batch
        self.batch_index = int(state["batch"])

    def next_batch(self) -> dict[str, Tensor] | None:
        """The next batch of tokens, ``{layer key: (batch_size, d)}``, or ``None`` at the end.

        Anything raised meanwhile (a KeyboardInterrupt included) first stops the workers."""
        try:
            return self._next_batch()
        except BaseException:
            if self._reader is not None:
                self._reader.close()
            raise

    def _next_batch(self) -> dict[str, Tensor] | None:
        while True:
            if self._pool is None:
                if self.epochs is not None and self.epoch >= self.epochs:
                    return None
                self._fill()
            n_pool = next(iter(self._pool.values())).shape[0]
            lo = self.batch_index * self.batch_size
            if lo + self.batch_size <= n_pool or (
                not self.drop_last and self._last_window and lo < n_pool
            ):
                self.batch_index += 1
                return {k: v[lo : lo + self.batch_size] for k, v in self._pool.items()}
            self._advance()

    def tokens_per_image(self) -> int:
        """Tokens selected per image (measured on the first readable image)."""
        if self._tokens_per_image is None:
            self._tokens_per_image = self._measure_tokens_per_image()
        return self._tokens_per_image

    def _measure_tokens_per_image(self) -> int:
        index, first_bad = 0, None
        while images := self.source.read(index, 1):
            if images[0] is not None:
                pixels = to_batch(images, self.model.preprocess)
                layer = next(iter(self.layer_specs.values()))
                captured = capture(self.model, pixels, [layer], self.tokens)
                return next(iter(captured.values())).tokens_per_image
            first_bad = first_bad or self.source.name(index)
            index += 1
        raise ValueError(_no_tokens_message(self.source, index, first_bad))

    # ------------------------------------------------------------------ windows
    def _image_order(self) -> Tensor | None:
        if not self.shuffle_images:
            return None
        gen = torch.Generator().manual_seed(_window_seed(self.seed, self.epoch, -1))
        return torch.randperm(len(self.source), generator=gen)

    def _read(self, order: Tensor | None, start: int, count: int) -> list[Any]:
        if order is None:
            return self.source.read(start, count)
        idx = order[start : start + count].tolist()
        return [self.source.read(i, 1)[0] for i in idx]

    def _captured_batch(self, order: Tensor | None, position: int) -> _Captured | None:
        """The image batch starting at ``position`` (a multiple of ``image_batch_size``),
        captured, or taken from the batch the previous window stopped in."""
        key = (self.epoch, position)
        if self._carry is not None and self._carry.key == key:
            return self._carry
        if self._reader is not None:
            images = self._reader.read(order, self.epoch, position)
        else:
            images = self._read(order, position, self.image_batch_size)
        if not images:
            return None
        readable = [(i, im) for i, im in enumerate(images) if im is not None]
        self._note_unreadable(order, position, images)
        self.images_read += len(readable)
        if not readable:
            return _Captured(key, len(images), [], {}, 0, None)
        pixels = to_batch([im for _, im in readable], self.model.preprocess)
        with self._autocast():
            captured = capture(self.model, pixels, list(self.layer_specs.values()), self.tokens)
        first = captured[self._capture_key(self.layer_keys[0])]
        return _Captured(
            key,
            len(images),
            [position + i for i, _ in readable],
            {k: captured[self._capture_key(k)].per_image() for k in self.layer_keys},
            first.tokens_per_image,
            first.token_index[: first.tokens_per_image],
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` in ``config.autocast`` on the model's device type (none: float32)."""
        if self.config.autocast is None:
            return contextlib.nullcontext()
        device_type = torch.device(getattr(self.model, "device", "cpu")).type
        return torch.autocast(device_type, dtype=getattr(torch, self.config.autocast))

    def _note_unreadable(self, order: Tensor | None, position: int, images: list[Any]) -> None:
        """Count the unreadable images of a batch (once per epoch, even when a batch is read
        again after an interruption or a resume); remember the first one."""
        if self._unreadable[0] != self.epoch:
            self._unreadable = (self.epoch, set())
        seen = self._unreadable[1]
        for i, image in enumerate(images):
            index = position + i if order is None else int(order[position + i])
            if image is not None or index in seen:
                continue
            seen.add(index)
            self.skipped_images += 1
            self._first_unreadable = self._first_unreadable or self.source.name(index)

    def _fill(self) -> None:
        """Capture tokens from (cursor, offset) until the window is full or the images end.

        Images are captured in batches aligned to multiples of ``image_batch_size`` (from the
        start of the epoch), so a window that starts inside a batch is served from the
        batch the previous window stopped in, and a resumed stream recomputes exactly that
        batch: the same images in the same forward pass, hence the same activations.
        """
        order = self._image_order()
        keys = (
            [*self.layer_keys, "image_index", "token_index"] if self.provenance else self.layer_keys
        )
        chunks: dict[str, list[Tensor]] = {k: [] for k in keys}
        have = 0
        position = self.cursor - self.cursor % self.image_batch_size
        self._last_window = False
        while have < self.buffer_tokens:
            batch = self._captured_batch(order, position)
            if batch is None:
                self._last_window = True
                break
            t_img = batch.tokens_per_image
            for row, image_pos in enumerate(batch.positions):
                if image_pos < self.cursor:
                    continue
                take_from = self.offset if image_pos == self.cursor else 0
                take = min(t_img - take_from, self.buffer_tokens - have)
                for k in self.layer_keys:
                    chunks[k].append(batch.per_image[k][row, take_from : take_from + take])
                if self.provenance:
                    image_id = image_pos if order is None else int(order[image_pos])
                    chunks["image_index"].append(torch.full((take,), image_id, dtype=torch.long))
                    chunks["token_index"].append(batch.token_index[take_from : take_from + take])
                have += take
                if have >= self.buffer_tokens:
                    done = take_from + take
                    self._next_start = (image_pos, done) if done < t_img else (image_pos + 1, 0)
                    break
            else:
                position += batch.n_read
                continue
            self._carry = batch
            break
        if self._last_window:
            self._next_start, self._carry = (position, 0), None
            if have == 0 and self.cursor == 0 and self.offset == 0:  # a whole pass, no token
                raise ValueError(
                    _no_tokens_message(
                        self.source,
                        self.skipped_images,
                        self._first_unreadable,
                        self.images_read,
                        self.tokens,
                    )
                )
            self._warn_unreadable(stacklevel=5)
        gen = torch.Generator().manual_seed(_window_seed(self.seed, self.epoch, self.window))
        pool = {
            k: torch.cat(v) if v else torch.empty(0, self._widths.get(k, 0))
            for k, v in chunks.items()
        }
        perm = torch.randperm(have, generator=gen)
        self._pool = {k: v[perm.to(v.device)] for k, v in pool.items()}

    def _capture_key(self, key: str) -> str:
        spec = self.layer_specs[key]
        return f"blocks.{spec}" if isinstance(spec, int) else spec

    def _advance(self) -> None:
        """Move to the next window (or the next epoch after the last one)."""
        if self._last_window:
            self.epoch, self.window, self.cursor, self.offset = self.epoch + 1, 0, 0, 0
        else:
            self.window += 1
            self.cursor, self.offset = self._next_start
        self.batch_index, self._pool = 0, None
