"""The contract every SAE family shares.

An SAE is an ``nn.Module`` over (N, d) tokens with

* ``encode(x) -> codes`` (N, n_concepts) dense codes,
* ``decode(codes) -> x_hat`` (N, d),
* ``forward(x) -> SAEOutput``: reconstruction, codes and the training loss with its terms,
* ``dictionary``: the (n_concepts, d) atoms,
* ``prepare_gradients()`` / ``apply_constraints()``: called by a training loop right before
  and right after each optimizer step.

It takes *raw* layer activations. Normalisation statistics (``input_mean``, ``input_scale``)
are buffers saved with it; internally ``x_n = (x - input_mean) / input_scale``, the learned
pre-bias ``b_pre`` is subtracted before encoding and added after decoding, and the loss is
computed in that normalised space (per-element mean squared error, so it is close to the FVU
when inputs are standardised).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from probe_sae.saes.archetypal import ArchetypalConfig, ArchetypalDictionary
from probe_sae.saes.config import SAEConfig
from probe_sae.saes.dictionary import Dictionary, FreeDictionary
from probe_sae.saes.sparse import SparseCodes


@dataclass
class SAEOutput:
    """What ``SAE.forward`` returns.

    Attributes:
        x_hat: (N, d) reconstruction in raw activation space.
        loss: scalar training loss (reconstruction plus the family's penalties).
        terms: detached loss terms by name (``"mse"`` always; ``"l1"``, ``"l0"``, ``"auxk"``...).
        sparse_codes / dense_codes: the codes, in whichever form the family produced.
    """

    x_hat: Tensor
    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    sparse_codes: SparseCodes | None = None
    dense_codes: Tensor | None = None

    @property
    def codes(self) -> Tensor:
        """(N, n_concepts) dense codes."""
        if self.dense_codes is None:
            if self.sparse_codes is None:
                raise ValueError("this SAEOutput holds no codes")
            self.dense_codes = self.sparse_codes.to_dense()
        return self.dense_codes

    @property
    def l0(self) -> Tensor:
        """(N,) number of active concepts per token."""
        return (self.codes != 0).sum(dim=1)


def check_tokens(x: Tensor, d_model: int) -> None:
    """Raise a clear error unless ``x`` is an (N, d_model) floating tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"an SAE takes a torch.Tensor of shape (N, {d_model}), got {type(x).__name__}"
        )
    if x.ndim != 2:
        raise ValueError(
            f"an SAE takes (N, d) tokens, got shape {tuple(x.shape)}: flatten batch and token "
            f"dimensions first, e.g. x.reshape(-1, {d_model})"
        )
    if x.shape[1] != d_model:
        raise ValueError(
            f"width mismatch: the SAE was built for d_model={d_model} but the activations have "
            f"width {x.shape[1]}; hook the layer it was trained on or build an SAE with "
            f"d_model={x.shape[1]}"
        )
    if not x.is_floating_point():
        raise TypeError(f"activations must be floating point, got {x.dtype}")


class SAE(nn.Module):
    """Base class: pre-bias, normalisation buffers, dictionary, save/load plumbing.

    Args:
        d_model: width of the layer's tokens.
        config: the family's config (``TopKConfig(k=16)``, ...); ``n_concepts`` defaults to
            ``expansion × d_model``. Kept, resolved, as ``sae.config``.
        dictionary: the atoms; default a free dictionary initialised from ``config.seed``
            (unit-norm for the families that need it). An archetypal dictionary is built
            from candidate points: ``build_sae(config, d_model, candidates=...)``.
    """

    family: ClassVar[str] = "abstract"
    #: the family's config class
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    #: families whose atoms must have unit norm (their default dictionary is unit-norm).
    needs_unit_norm: ClassVar[bool] = True

    def __init__(
        self, d_model: int, config: SAEConfig | None = None, dictionary: Dictionary | None = None
    ) -> None:
        super().__init__()
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got "
                f"{type(config).__name__}; build_sae(config, d_model) picks the class for you"
            )
        config = config.resolve(d_model)  # checks d_model
        n_concepts = int(config.n_concepts)  # type: ignore[arg-type]
        if isinstance(dictionary, ArchetypalDictionary):
            # δ and the candidates come from the dictionary; the start it was drawn from is the
            # config's (a loaded dictionary is rebuilt with placeholder weights)
            recorded = config.archetypal_dictionary
            init = recorded.init if recorded is not None else dictionary.init
            config = dataclasses.replace(  # type: ignore[call-arg]
                config,
                archetypal=ArchetypalConfig(dictionary.delta, dictionary.n_candidates, init),
            )
        elif config.archetypal_dictionary is not None:
            raise ValueError(
                "an archetypal dictionary is built from candidate points: use "
                "build_sae(config, d_model, candidates=kmeans(acts, n_clusters)) or pass "
                "dictionary=ArchetypalDictionary(...)"
            )
        elif dictionary is None:
            generator = torch.Generator().manual_seed(config.seed)
            dictionary = FreeDictionary(
                n_concepts, d_model, unit_norm=self.needs_unit_norm, generator=generator
            )
        elif isinstance(dictionary, FreeDictionary) and dictionary.unit_norm != self.needs_unit_norm:
            raise ValueError(
                f"{self.family} needs a FreeDictionary with unit_norm={self.needs_unit_norm}"
            )
        if (dictionary.n_concepts, dictionary.d_model) != (n_concepts, d_model):
            raise ValueError(
                f"dictionary has shape ({dictionary.n_concepts}, {dictionary.d_model}) but the SAE "
                f"expects ({n_concepts}, {d_model})"
            )
        self.config = config
        self.d_model, self.n_concepts = d_model, n_concepts
        self.decoder = dictionary
        self.b_pre = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("input_mean", torch.zeros(d_model))
        self.register_buffer("input_scale", torch.ones(d_model))
        self.normalization = "none"
        #: where the SAE's activations come from (``model``, ``layer``, ``where``, ``tokens``),
        #: saved with it so that ``probe-sae report`` / ``eval`` can re-attach it to its layer.
        self.provenance: dict[str, Any] = {}

    @property
    def label(self) -> str:
        """The family as people name it: ``"rasae (topk)"`` / ``"asae (topk)"`` for an encoder
        family over an archetypal dictionary (δ > 0 / δ = 0), else ``family``."""
        archetypal = self.config.archetypal_dictionary
        if archetypal is not None:
            return f"{'rasae' if archetypal.delta > 0 else 'asae'} ({self.family})"
        return self.family

    # ----------------------------------------------------------------- dictionary
    @property
    def dictionary(self) -> Tensor:
        """(n_concepts, d) atoms in the normalised space the SAE works in."""
        return self.decoder.atoms()

    @torch.no_grad()
    def prepare_gradients(self) -> None:
        """Call after ``backward()`` and before ``optimizer.step()``."""
        self.decoder.prepare_gradients()

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Call right after ``optimizer.step()``: keeps the dictionary feasible."""
        self.decoder.apply_constraints()

    # -------------------------------------------------------------- normalisation
    @torch.no_grad()
    def set_normalization(
        self, mean: Tensor | None, scale: Tensor | float | None, kind: str
    ) -> None:
        """Store the statistics that map raw activations to the SAE's space.

        ``x_n = (x - mean) / scale``; ``kind`` names the scheme (e.g. ``"standardize"``).
        """
        mean_t = torch.zeros(self.d_model) if mean is None else torch.as_tensor(mean).reshape(-1)
        scale_t = torch.ones(self.d_model) if scale is None else torch.as_tensor(scale).reshape(-1)
        if scale_t.numel() == 1:
            scale_t = scale_t.expand(self.d_model)
        if mean_t.numel() != self.d_model or scale_t.numel() != self.d_model:
            raise ValueError(f"normalisation statistics must have {self.d_model} entries")
        if not torch.isfinite(scale_t).all() or (scale_t <= 0).any():
            raise ValueError("normalisation scale must be finite and positive")
        self.input_mean.copy_(mean_t)
        self.input_scale.copy_(scale_t)
        self.normalization = kind

    def normalize(self, x: Tensor) -> Tensor:
        """Raw activations → the SAE's space."""
        return (x - self.input_mean) / self.input_scale

    def denormalize(self, x_n: Tensor) -> Tensor:
        """The SAE's space → raw activations."""
        return x_n * self.input_scale + self.input_mean

    # ------------------------------------------------------------------- public API
    def encode(self, x: Tensor, **options: Any) -> Tensor:
        """(N, d) raw activations → (N, n_concepts) dense codes.

        ``options`` are family-specific (e.g. ``k=`` steps for :class:`MPSAE`).
        """
        check_tokens(x, self.d_model)
        codes = self._encode(self.normalize(x) - self.b_pre, **options)
        return codes if isinstance(codes, Tensor) else codes.to_dense()

    def decode(self, codes: Tensor | SparseCodes) -> Tensor:
        """(N, n_concepts) codes (dense or :class:`SparseCodes`) → (N, d) raw reconstruction."""
        if isinstance(codes, SparseCodes):
            x_n = self.decoder.decode_sparse(codes)
        else:
            if codes.ndim != 2 or codes.shape[1] != self.n_concepts:
                raise ValueError(
                    f"codes must have shape (N, {self.n_concepts}), got {tuple(codes.shape)}"
                )
            x_n = self.decoder.decode_dense(codes)
        return self.denormalize(x_n + self.b_pre)

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None, **options: Any) -> SAEOutput:
        """Encode, decode and compute the loss.

        Args:
            x: (N, d) raw activations.
            dead_mask: (n_concepts,) bool, latents considered dead (used by the AuxK loss).
            options: family-specific (e.g. ``k=`` steps for :class:`MPSAE`).
        """
        check_tokens(x, self.d_model)
        x_n = self.normalize(x)
        out = self._forward(x_n, dead_mask=dead_mask, **options)
        out.x_hat = self.denormalize(out.x_hat)
        return out

    # --------------------------------------------------------------- family hooks
    def _encode(self, x_c: Tensor) -> Tensor | SparseCodes:
        """Centred normalised tokens ``x_n - b_pre`` → codes."""
        raise NotImplementedError

    def _forward(self, x_n: Tensor, *, dead_mask: Tensor | None) -> SAEOutput:
        """Normalised tokens → SAEOutput whose ``x_hat`` is still normalised."""
        raise NotImplementedError

    # ----------------------------------------------------------------- save / load
    def save_pretrained(self, path: str | Path, format: str = "probe_sae") -> Path:
        """Write the SAE into the folder ``path``; returns the folder.

        ``format="probe_sae"`` (the default) writes ``config.json`` + ``model.safetensors``
        (:func:`probe_sae.saes.io.save_sae`); ``format="saelens"`` writes SAELens's ``cfg.json``
        + ``sae_weights.safetensors`` (:func:`probe_sae.saes.saelens.save_saelens`: ReLU, TopK,
        BatchTopK, JumpReLU and MP-SAE only). ``load_sae`` reads both.
        """
        if format == "probe_sae":
            from probe_sae.saes.io import save_sae

            return save_sae(self, path)
        if format == "saelens":
            from probe_sae.saes.saelens import save_saelens

            return save_saelens(self, path)
        raise ValueError(
            f"unknown SAE format {format!r}: choose 'probe_sae' (config.json + "
            "model.safetensors, the default) or 'saelens' (cfg.json + sae_weights.safetensors)"
        )

    def push_to_hub(
        self,
        repo_id: str,
        subfolder: str | None = None,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str | None = None,
        metrics: Any = None,
        training_log: Any = None,
    ) -> Any:
        """Upload the SAE to the Hugging Face Hub repo ``repo_id`` (``"org/name"``, created if
        needed), at its root or in ``subfolder``: ``config.json`` + ``model.safetensors`` and a
        generated ``README.md`` model card; ``load_sae("hf:org/name[/subfolder]")`` loads it.

        ``metrics`` (an ``EvalReport`` or a mapping with ``fvu``, ``l0``, ``dead_fraction``) and
        ``training_log`` (``TrainResult.metrics`` or a ``training_log.json``) fill the card's
        figures; see :func:`probe_sae.hub.push_sae`, which this calls. Returns the commit's
        ``CommitInfo``.
        """
        from probe_sae.hub import push_sae

        return push_sae(
            self,
            repo_id,
            subfolder,
            private=private,
            token=token,
            commit_message=commit_message,
            metrics=metrics,
            training_log=training_log,
        )


def mse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-element mean squared error."""
    return (x_hat - x).pow(2).mean()


class LinearEncoderSAE(SAE):
    """SAEs whose encoder is one affine map ``pre = (x_n - b_pre) @ W_enc.T + b_enc``.

    ``W_enc`` (n_concepts, d) starts as the atoms scaled by 1/‖atom‖², so that at
    initialisation a code times its atom is the projection of the input on that atom.
    """

    def __init__(
        self, d_model: int, config: SAEConfig | None = None, dictionary: Dictionary | None = None
    ) -> None:
        super().__init__(d_model, config, dictionary)
        n_concepts = self.n_concepts
        with torch.no_grad():
            atoms = self.decoder.atoms()
            w_enc = atoms / atoms.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_enc = nn.Parameter(w_enc.clone())
        self.b_enc = nn.Parameter(torch.zeros(n_concepts))

    def pre_activations(self, x_c: Tensor) -> Tensor:
        """(N, d) centred tokens → (N, n_concepts) pre-activations."""
        return torch.addmm(self.b_enc, x_c, self.W_enc.T)
