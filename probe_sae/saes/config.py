"""The typed configuration every SAE family shares.

Each family module defines one frozen config (``TopKConfig`` in ``topk.py``, ...) that
subclasses :class:`SAEConfig` and names its family; defining it registers it, so
``SAEConfig.tagged("topk")`` finds it and ``from_dict(SAEConfig, {"family": "topk", ...})``
builds it. A saved SAE's ``config.json`` is this config (plus format, width and provenance).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from probe_sae.config import ConfigError
from probe_sae.saes.archetypal import ArchetypalConfig

Config = TypeVar("Config", bound="SAEConfig")

_FAMILIES: dict[str, type[SAEConfig]] = {}


@dataclass(frozen=True)
class SAEConfig:
    """Hyper-parameters every family has. Subclasses add their own."""

    TAG_FIELD: ClassVar[str] = "family"
    #: the family's name (``"topk"``, ...); set by each subclass
    family: ClassVar[str] = "abstract"

    n_concepts: int | None = None
    """Dictionary size (number of concepts); default: expansion × the layer's width."""
    expansion: int = 8
    """Dictionary size as a multiple of the layer's width, when n_concepts is not set."""
    seed: int = 0
    """Seeds the random initial dictionary and the k-means of archetypal candidates."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:
            _FAMILIES[cls.family] = cls

    def __post_init__(self) -> None:
        if self.n_concepts is not None:
            check_positive_int(
                "n_concepts",
                self.n_concepts,
                "it is the dictionary size (e.g. 8 × the layer's width); leave it unset (None) "
                "to use expansion × the layer's width",
            )
        check_positive_int(
            "expansion", self.expansion, "n_concepts = expansion × the layer's width; e.g. 8"
        )
        check_int("seed", self.seed)

    @classmethod
    def tagged(cls, family: str) -> type[SAEConfig]:
        """The config class registered for ``family``."""
        if family not in _FAMILIES:
            raise ConfigError(
                f"unknown SAE family {family!r}; the families are {sorted(_FAMILIES)}"
            )
        return _FAMILIES[family]

    def resolve(self: Config, d_model: int) -> Config:
        """This config with everything that depends on the layer's width filled in
        (``n_concepts`` from ``expansion``, and the family's own width-dependent defaults)."""
        check_d_model(d_model)
        n_concepts = self.n_concepts if self.n_concepts is not None else self.expansion * d_model
        return dataclasses.replace(self, n_concepts=n_concepts)

    @property
    def archetypal_dictionary(self) -> ArchetypalConfig | None:
        """The archetypal dictionary this SAE uses, ``None`` for a free one."""
        return None


def check_int(name: str, value: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer (``True`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__}): pass a whole "
            "number"
        )


def check_positive_int(name: str, value: object, meaning: str) -> None:
    """Raise :class:`ConfigError`, saying what ``name`` means, unless ``value`` is an integer >= 1."""
    check_int(name, value)
    if value <= 0:  # type: ignore[operator]
        raise ConfigError(f"{name} must be positive, got {value}: {meaning}")


def check_d_model(d_model: object) -> None:
    """Raise a clear error unless ``d_model`` (the layer's width) is a positive integer."""
    if isinstance(d_model, bool) or not isinstance(d_model, numbers.Integral) or d_model <= 0:
        raise ValueError(
            f"d_model must be a positive integer, the width of the layer's tokens (e.g. 768 for "
            f"a ViT-B), got {d_model!r}; read it from the activations: acts.shape[-1]"
        )


def registered_families() -> dict[str, type[SAEConfig]]:
    """``{family name: config class}`` of every defined family."""
    return dict(_FAMILIES)


@dataclass(frozen=True)
class SparsityConfig(SAEConfig):
    """Families whose sparsity is set by ``k`` (TopK, BatchTopK, matching pursuit)."""

    k: int = 32
    """Sparsity: concepts per token (TopK), on average per token over a batch (BatchTopK), or
    matching-pursuit steps (MP)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(
            "k", self.k, "it is the concepts per token (matching-pursuit steps for MP); e.g. 32"
        )


@dataclass(frozen=True)
class SparsityTargetConfig(SAEConfig):
    """Families whose sparsity is set by a penalty coefficient (ReLU's L1, JumpReLU's L0),
    which ``target_l0`` can steer during training (see :class:`probe_sae.saes.relu.L0Controller`)."""

    target_l0: float | None = None
    """Mean active concepts per token to steer the penalty coefficient to during training, by
    a multiplicative controller on the running L0 (none: the coefficient stays fixed)."""
    target_l0_rate: float = 0.01
    """Gain η of that controller: the coefficient is multiplied by exp(η · clamped relative L0
    error) after every training batch (at most e^η per step)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_l0 is not None and (
            isinstance(self.target_l0, bool) or not self.target_l0 > 0
        ):
            raise ConfigError(
                f"target_l0 must be a positive number of concepts per token or none, got "
                f"{self.target_l0!r}; e.g. 16, or leave it unset to keep the coefficient fixed"
            )
        if not self.target_l0_rate > 0:
            raise ConfigError(
                f"target_l0_rate must be positive, got {self.target_l0_rate!r}; e.g. 0.01"
            )


@dataclass(frozen=True)
class LinearEncoderConfig(SAEConfig):
    """Families with one affine encoder, which may decode through an archetypal dictionary."""

    archetypal: ArchetypalConfig | None = None
    """The archetypal dictionary (A-SAE / RA-SAE, Fel et al. 2025), or none for free atoms."""

    @property
    def archetypal_dictionary(self) -> ArchetypalConfig | None:
        return self.archetypal
