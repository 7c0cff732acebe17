"""The typed configuration every SAE family shares.

Each family module defines one frozen config (``TopKConfig`` in ``topk.py``, ...) that
subclasses :class:`SAEConfig` and names its family; defining it registers it, so
``SAEConfig.tagged("topk")`` finds it and ``from_dict(SAEConfig, {"family": "topk", ...})``
builds it. A saved SAE's ``config.json`` is this config (plus format, width and provenance).
"""

from __future__ import annotations

import dataclasses
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
        if self.n_concepts is not None and self.n_concepts <= 0:
            raise ConfigError(f"n_concepts must be positive, got {self.n_concepts}")
        if self.expansion <= 0:
            raise ConfigError(f"expansion must be positive, got {self.expansion}")

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
        n_concepts = self.n_concepts if self.n_concepts is not None else self.expansion * d_model
        return dataclasses.replace(self, n_concepts=n_concepts)

    @property
    def archetypal_dictionary(self) -> ArchetypalConfig | None:
        """The archetypal dictionary this SAE uses, ``None`` for a free one."""
        return None


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
        if self.k <= 0:
            raise ConfigError(f"k must be positive, got {self.k}")


@dataclass(frozen=True)
class LinearEncoderConfig(SAEConfig):
    """Families with one affine encoder, which may decode through an archetypal dictionary."""

    archetypal: ArchetypalConfig | None = None
    """The archetypal dictionary (A-SAE / RA-SAE, Fel et al. 2025), or none for free atoms."""

    @property
    def archetypal_dictionary(self) -> ArchetypalConfig | None:
        return self.archetypal
