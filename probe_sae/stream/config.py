"""``StreamConfig``: how an :class:`~probe_sae.stream.ActivationStream` turns images into
batches of tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from torch import Tensor

from probe_sae.config import ConfigError
from probe_sae.models.layout import NAMED_SELECTIONS

#: dtypes ``StreamConfig.autocast`` runs the model forward in
AutocastDtype = Literal["bfloat16", "float16"]
AUTOCAST_DTYPES: tuple[str, ...] = get_args(AutocastDtype)


@dataclass(frozen=True)
class StreamConfig:
    """Token selection, batching, shuffling and passes of an activation stream."""

    tokens: str | tuple[int, ...] = "all"
    """Tokens kept per image: all, cls, patches, registers, or token positions (0,5,6)."""
    batch_size: int = 1024
    """Tokens per training step."""
    buffer_tokens: int = 65536
    """Shuffle window in tokens (rounded up to a multiple of batch_size)."""
    image_batch_size: int = 32
    """Images per forward pass of the model."""
    epochs: int | None = 1
    """Passes over the images (none: endless; needs a source of known length)."""
    shuffle_images: bool = False
    """Visit the images in a new seeded order each epoch."""
    seed: int = 0
    """Seeds the shuffle window and the image order."""
    drop_last: bool = True
    """Drop each epoch's last partial batch (training); evaluation keeps it."""
    num_workers: int | None = None
    """Processes that read and preprocess images ahead of the model; default: up to 4 when
    the model is on a GPU, none on CPU."""
    autocast: AutocastDtype | None = None
    """Run the model forward under torch.autocast in this dtype (bfloat16, float16); the tokens keep that dtype until the SAE step."""

    def __post_init__(self) -> None:
        tokens = self.tokens
        if isinstance(tokens, Tensor):
            tokens = tuple(int(i) for i in tokens.reshape(-1).tolist())
        elif not isinstance(tokens, str) and isinstance(tokens, Sequence):
            tokens = tuple(int(i) for i in tokens)
        if isinstance(tokens, str) and tokens not in NAMED_SELECTIONS:
            raise ConfigError(
                f"tokens must be one of {NAMED_SELECTIONS} or token positions, got {tokens!r}"
            )
        object.__setattr__(self, "tokens", tokens)
        for name in ("batch_size", "buffer_tokens", "image_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be positive or none (endless), got {self.epochs}")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise ConfigError(
                f"autocast must be one of {AUTOCAST_DTYPES} or none (float32), got {self.autocast!r}"
            )
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
