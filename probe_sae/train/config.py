"""``TrainConfig``: the optimisation settings of a training run, shared by all its SAEs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from probe_sae.config import ConfigError

Normalization = Literal["standardize", "scalar", "none"]
#: what ``TrainConfig.sae_autocast`` accepts (float16 training would need loss scaling)
SAEAutocastDtype = Literal["bfloat16"]
AUTOCAST_DTYPES: tuple[str, ...] = get_args(SAEAutocastDtype)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, initialisation, dead-latent window, logging and checkpoints."""

    max_steps: int | None = None
    """Training steps; default: one pass over the stream's epochs (train_sae, probe-sae train)."""
    max_tokens: int | None = None
    """Stop after this many tokens (the smaller of the two bounds wins)."""
    lr: float = 5e-4
    """Peak learning rate of AdamW."""
    warmup_steps: int = 50
    """Linear warm-up steps before the cosine decay."""
    final_lr_fraction: float = 0.05
    """Learning rate at the end of the cosine decay, as a fraction of lr."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float | None = 1.0
    """Clip the gradient norm of each SAE to this (none: no clipping)."""
    normalization: Normalization = "standardize"
    """Map raw activations into the SAE's space: per-dimension standardize, one scalar scale, or none."""
    init_tokens: int = 16384
    """Tokens seen before training for normalisation, b_pre and archetypal candidates."""
    dead_window: int = 10_000_000
    """A latent that has not fired for this many tokens counts as dead."""
    dense_threshold: float = 1e-2
    """A latent firing on more than this fraction of tokens counts as dense."""
    summary_tokens: int = 65_536
    """Last tokens of the run each final SAE is evaluated on (TrainResult.summary; 0: none)."""
    log_every: int = 50
    """Steps between rows of the metrics log."""
    checkpoint_every: int | None = None
    """Steps between checkpoints (none: only at the end and on Ctrl-C, when checkpoint_dir is set)."""
    checkpoint_dir: str | None = None
    """Folder for checkpoints (probe-sae train: OUT/checkpoints when checkpoint_every is set)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest)."""
    progress: bool = True
    """Show a progress bar."""
    device: str | None = None
    """Device of the SAEs (cpu, cuda, cuda:1); default: the live model's device (cuda:LOCAL_RANK under torchrun), cpu for a cache."""
    sae_devices: tuple[str, ...] = ()
    """One device per SAE, in the run's order (cuda:0,cuda:1,...); the tokens of one forward pass are sent to each; empty: all on device."""
    sae_autocast: SAEAutocastDtype | None = None
    """Run each SAE's forward and loss under torch.autocast in this dtype (bfloat16); parameters, optimizer state and metrics stay float32/float64."""
    compile: bool = False
    """Run each SAE's forward through torch.compile (falls back to eager with a warning when it cannot compile)."""
    prefetch: bool | None = None
    """Read the next batch in a background thread (a CUDA stream on GPUs) while the SAEs train; default: on when the SAEs are on a GPU."""
    collective_timeout: float = 1800.0
    """Seconds a rank waits for the others in a collective under torchrun before failing (a dead rank)."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_tokens", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive or none, got {value}")
        if self.summary_tokens < 0:
            raise ConfigError(
                f"summary_tokens must be 0 (no summary) or more, got {self.summary_tokens}"
            )
        if self.sae_autocast is not None and self.sae_autocast not in AUTOCAST_DTYPES:
            raise ConfigError(
                f"sae_autocast must be one of {AUTOCAST_DTYPES} or none, got {self.sae_autocast!r}"
                " (float16 training needs loss scaling; use bfloat16)"
            )
        if self.collective_timeout <= 0:
            raise ConfigError(
                f"collective_timeout must be positive seconds, got {self.collective_timeout}"
            )
        object.__setattr__(self, "sae_devices", tuple(str(d) for d in self.sae_devices))
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        for name in ("warmup_steps", "init_tokens", "dead_window", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 0 or (name != "warmup_steps" and getattr(self, name) == 0):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
