"""SAELens folders in and out: ``cfg.json`` + ``sae_weights.safetensors`` (SAELens 6.x).

SAELens (Bloom, Tigges, Duong & Chanin, github.com/decoderesearch/SAELens; ``SAE.save_model`` /
``SAE.load_from_disk``) writes ``cfg.json`` = ``SAEConfig.to_dict()``: ``architecture``,
``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
``normalize_activations``, ``reshape_activations``, the architecture's own keys (``k`` and
``rescale_acts_by_decoder_norm`` for ``topk``; ``residual_threshold``, ``max_iterations``,
``stop_on_duplicate_support`` for ``matching_pursuit``) and a free-form ``metadata`` object
(``model_name``, ``hook_name``, ``sae_lens_version``, ...). The weights are ``W_enc`` (d_in,
d_sae), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in), and ``threshold`` (d_sae)
for ``jumprelu``. Its forward on tokens u (``process_sae_in``, ``encode``, ``decode``)::

    pre   = (u - apply_b_dec_to_input · b_dec) @ W_enc + b_enc
    z     = ReLU(pre)                                   standard
            ReLU of the k largest entries of pre, 0 elsewhere   topk
            ReLU(pre) · 1[pre > threshold]               jumprelu
    u_hat = z @ W_dec + b_dec

Ours (:mod:`probe_sae.saes.base`) on raw x: ``x_n = (x - input_mean) / input_scale``,
``pre = (x_n - b_pre) @ W_encᵀ + b_enc``, ``x_hat = (z @ D + b_pre) · input_scale + input_mean``.
Writing folds the normalisation into the weights, exactly::

    b_dec = input_mean + input_scale ⊙ b_pre
    W_enc (SAELens) = (W_enc / input_scale)ᵀ        W_dec = D ⊙ input_scale

so SAELens computes the same codes and reconstructions from raw activations (up to float
rounding). What SAELens has no place for (our family config, the normalisation statistics,
the provenance) goes into ``metadata["probe_sae"]``; reading such a folder back unfolds the
weights and gives the same SAE again (unit-norm atoms, same config and provenance).

Architectures: ``standard`` ↔ :class:`ReLUSAE`, ``topk`` ↔ :class:`TopKSAE`, ``jumprelu`` ↔
:class:`JumpReLUSAE` (and :class:`BatchTopKSAE`, written as ``jumprelu`` with its threshold θ
on every latent, as SAELens saves its own BatchTopK SAEs), ``matching_pursuit`` ↔
:class:`MPSAE` (``max_iterations = k``, ``residual_threshold = 0``,
``stop_on_duplicate_support`` = our ``stop_on_reselect``, and no per-dimension input scale: its
encoder is tied to its decoder).
Read only: SAELens training checkpoints of ``batchtopk`` (``topk_threshold``). Archetypal
dictionaries (A-SAE / RA-SAE) have no SAELens counterpart. Anything that would not give the
same codes raises :class:`SAELensConversionError` naming what differs.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import numbers
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from probe_sae._atomic import atomic_write_files
from probe_sae.config import ConfigError, from_dict, to_dict
from probe_sae.constants import (
    CONFIG_NAME,
    SAE_FORMAT,
    SAE_FORMAT_VERSION,
    SAELENS_CONFIG_NAME,
    SAELENS_WEIGHTS_NAME,
    __version__,
)
from probe_sae.saes.base import SAE
from probe_sae.saes.batchtopk import BatchTopKConfig, BatchTopKSAE
from probe_sae.saes.config import SAEConfig
from probe_sae.saes.factory import sae_from_config
from probe_sae.saes.io import (
    DTYPES,
    SAEFormatError,
    SAESaveError,
    _missing_folders,
    _remove_empty,
    _save_error,
)
from probe_sae.saes.jumprelu import JumpReLUConfig, JumpReLUSAE
from probe_sae.saes.mp import MPSAE, MPConfig
from probe_sae.saes.relu import ReLUConfig, ReLUSAE
from probe_sae.saes.topk import TopKConfig, TopKSAE

#: ``metadata.sae_lens_version`` of the folders we write: SAELens converts folders without one,
#: or older than 6, with its pre-6.0 loader
SAELENS_VERSION = "6.0.0"
#: the ``metadata`` key holding what SAELens has no place for
METADATA_KEY = "probe_sae"
#: the SAELens architecture each of our families is written as
ARCHITECTURE_OF = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "mp": "matching_pursuit",
}
#: the family each readable SAELens architecture becomes (a ``jumprelu`` folder we wrote from a
#: BatchTopK SAE, all thresholds equal, becomes BatchTopK again)
FAMILY_OF = {
    "standard": "relu",
    "topk": "topk",
    "batchtopk": "batchtopk",
    "jumprelu": "jumprelu",
    "matching_pursuit": "mp",
}
#: the tensors each architecture's ``sae_weights.safetensors`` holds
TENSORS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "batchtopk": ("W_enc", "b_enc", "W_dec", "b_dec", "topk_threshold"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "matching_pursuit": ("W_dec", "b_dec"),
}
#: whether our MP-SAE has SAELens's ``stop_on_duplicate_support`` rule (``stop_on_reselect``:
#: stop after the first step that re-selects an atom, that step taken)
_MP_STOPS_ON_RESELECT = "stop_on_reselect" in {f.name for f in dataclasses.fields(MPConfig)}
#: ``normalize_activations`` values SAELens knows that have no probe_sae equivalent, and why
UNSUPPORTED_NORMALIZATION = {
    "constant_norm_rescale": "it rescales every token to norm √d_in at run time (a factor per "
    "token)",
    "layer_norm": "it standardises every token over its own dimensions at run time (a mean and "
    "std per token)",
    "covariance_whitening": "it whitens with a d_in × d_in matrix that is not in the folder; "
    "fold it into the weights in SAELens (sae.fold_activation_whitening(...)) and save again",
}
#: keys SAELens versions before 6.0 wrote at the top level of ``cfg.json`` instead of in
#: ``metadata`` (``sae_lens.loading.pretrained_sae_loaders.LLM_METADATA_KEYS``), and renames
_PRE6_METADATA = (
    "model_name", "hook_name", "model_class_name", "hook_head_index",
    "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens", "neuronpedia_id",
    "context_size", "seqpos_slice", "dataset_path", "sae_lens_version",
    "sae_lens_training_version",
)  # fmt: skip
_PRE6_RENAMES = {
    "hook_point": "hook_name",
    "hook_point_head_index": "hook_head_index",
    "activation_fn_str": "activation_fn",
}


class SAELensConversionError(SAEFormatError):
    """An SAE with no exact counterpart in the other format (probe_sae ↔ SAELens).

    The message names what differs and what to use instead (usually our own format:
    ``sae.save_pretrained(path)``).
    """


# ------------------------------------------------------------------------------------ read
def is_saelens_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding SAELens's ``cfg.json`` and no probe_sae ``config.json``."""
    folder = Path(path)
    return (
        folder.is_dir()
        and not (folder / CONFIG_NAME).exists()
        and (folder / SAELENS_CONFIG_NAME).is_file()
    )


def load_saelens(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    norm_scaling_factor: float | None = None,
) -> SAE:
    """Read an SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) as our equivalent SAE.

    ``standard`` gives a :class:`ReLUSAE`, ``topk`` a :class:`TopKSAE`, ``jumprelu`` a
    :class:`JumpReLUSAE` (a :class:`BatchTopKSAE` when we wrote it from one), ``batchtopk``
    training checkpoints a :class:`BatchTopKSAE`, ``matching_pursuit`` an :class:`MPSAE`;
    ``encode`` / ``decode`` on raw activations then give SAELens's codes and reconstructions.
    SAELens 6.x folders are read, and the pre-6.0 ``cfg.json`` layout (``hook_point``,
    ``activation_fn_str``, top-level metadata, ``finetuning_scaling_factor``).

    ``normalize_activations``: ``"none"`` is read as is. ``"expected_average_only_in"`` needs
    ``norm_scaling_factor`` (SAELens's ``pretrained_saes.yaml`` entry, or ``scaling_factor`` in
    the training run's ``activation_scaler.json``): the SAE then takes raw activations and
    multiplies them by it, as ``SAE.from_pretrained`` folds it. ``constant_norm_rescale``,
    ``layer_norm`` and ``covariance_whitening`` (per-token or full-matrix maps) have no
    probe_sae equivalent and raise :class:`SAELensConversionError`.

    SAELens's ``metadata`` (model name, hook name, ...) is kept in
    ``sae.provenance["saelens"]``. Raises :class:`~probe_sae.saes.io.SAEFormatError` naming the
    file and the problem when the folder is not a valid SAELens SAE.
    """
    folder = Path(path)
    cfg_path = folder / SAELENS_CONFIG_NAME
    cfg = _read_config(folder)
    tensors = _read_weights(folder)
    _check_tensors(folder / SAELENS_WEIGHTS_NAME, cfg, tensors)
    block = _probe_sae_block(cfg_path, cfg)
    mean, scale, unfold_mean, unfold_scale, kind = _normalization(
        cfg_path, cfg, block, norm_scaling_factor
    )
    weights = _centred_weights(cfg, tensors)
    weights = _unfold(cfg_path, cfg, weights, unfold_mean, unfold_scale)
    config = _config(cfg_path, cfg, weights, block)
    try:
        sae = sae_from_config(config, int(cfg["d_in"]))
    except (ConfigError, TypeError, ValueError) as err:
        raise SAEFormatError(f"{cfg_path} describes no SAE probe_sae can build: {err}") from err
    target = DTYPES[_dtype_name(cfg["dtype"])]
    sae.to(target)
    state = _state(sae, weights, mean, scale)
    sae.load_state_dict({k: v.to(target) if v.is_floating_point() else v for k, v in state.items()})
    sae.normalization = kind
    sae.provenance = dict(block["provenance"]) if block else {"saelens": _saelens_provenance(cfg)}
    _warn_if_not_unit_norm(sae, folder)
    sae.eval()
    if device is not None or dtype is not None:
        sae.to(device=device, dtype=dtype)
    return sae


def _read_config(folder: Path) -> dict[str, Any]:
    """``cfg.json``, in the 6.x layout, checked."""
    if not folder.is_dir():
        raise SAEFormatError(f"{folder} is not a folder: pass an SAELens SAE's folder")
    cfg_path = folder / SAELENS_CONFIG_NAME
    if not cfg_path.is_file():
        raise SAEFormatError(f"{folder} holds no {SAELENS_CONFIG_NAME}: it is not an SAELens SAE")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{cfg_path} is not valid JSON ({err}); save the SAE again") from err
    except OSError as err:
        raise SAEFormatError(
            f"cannot read {cfg_path} ({err.strerror or err}): check its permissions"
        ) from err
    if not isinstance(cfg, dict):
        raise SAEFormatError(
            f"{cfg_path} holds a JSON {type(cfg).__name__}, not an SAELens config object"
        )
    cfg = _upgrade_pre6(cfg_path, cfg)
    _check_config(cfg_path, cfg)
    return cfg


def _version_major(version: Any) -> int | None:
    """The major number of a version string (``"6.0.0-rc.0"`` → 6), ``None`` if it has none."""
    match = re.match(r"\s*(\d+)", str(version))
    return None if match is None else int(match.group(1))


def _major_version(cfg_path: Path, version: Any) -> int:
    major = _version_major(version)
    if major is None:
        raise SAEFormatError(f"{cfg_path}: sae_lens_version is {version!r}, not a version number")
    return major


def _upgrade_pre6(cfg_path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """A pre-6.0 ``cfg.json`` in the 6.x layout (as SAELens's ``handle_pre_6_0_config``)."""
    metadata = cfg.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise SAEFormatError(f"{cfg_path}: metadata is {metadata!r}, not an object")
    version = cfg.get("sae_lens_version")
    if not version and isinstance(metadata, dict):
        version = metadata.get("sae_lens_version")
    if version and _major_version(cfg_path, version) >= 6:
        return cfg
    new = {_PRE6_RENAMES.get(k, k): v for k, v in cfg.items()}
    activation = new.pop("activation_fn", None) or "relu"
    kwargs = new.pop("activation_fn_kwargs", None) or {}
    new.setdefault("architecture", "standard")
    if activation == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        new["architecture"], new["k"] = "topk", kwargs["k"]
    elif new["architecture"] == "standard" and activation != "relu":
        raise SAELensConversionError(
            f"{cfg_path}: activation_fn {activation!r} is not ReLU; probe_sae's ReLU SAE takes "
            "only ReLU (supported: relu, and topk with activation_fn_kwargs.k)"
        )
    norm = new.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        new["normalize_activations"] = "expected_average_only_in" if norm else "none"
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("dtype", "float32")
    moved = {k: new.pop(k) for k in _PRE6_METADATA if k in new}
    new["metadata"] = {**moved, **(metadata if isinstance(metadata, dict) else {})}
    return new


def _check_config(cfg_path: Path, cfg: dict[str, Any]) -> None:
    """Raise :class:`SAEFormatError` naming the first invalid key of a 6.x ``cfg.json``."""
    architecture = cfg.get("architecture")
    if architecture not in FAMILY_OF:
        raise SAELensConversionError(
            f"{cfg_path}: architecture {architecture!r} has no probe_sae equivalent; readable "
            f"architectures are {sorted(FAMILY_OF)}"
        )
    for key in ("d_in", "d_sae"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SAEFormatError(
                f"{cfg_path}: {key} is {value!r}, not a positive integer "
                f"({'the layer width' if key == 'd_in' else 'the number of latents'})"
            )
    cfg.setdefault("dtype", "float32")
    if not isinstance(cfg["dtype"], str) or _dtype_name(cfg["dtype"]) not in DTYPES:
        raise SAEFormatError(
            f"{cfg_path}: dtype is {cfg.get('dtype')!r}, not one of {sorted(DTYPES)}"
        )
    if not isinstance(cfg.get("apply_b_dec_to_input", True), bool):
        raise SAEFormatError(
            f"{cfg_path}: apply_b_dec_to_input is {cfg.get('apply_b_dec_to_input')!r}, not true "
            "or false"
        )
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise SAEFormatError(
            f"{cfg_path}: reshape_activations is {cfg.get('reshape_activations')!r}, not "
            "'none' or 'hook_z'"
        )
    if not isinstance(cfg.get("metadata") or {}, dict):
        raise SAEFormatError(f"{cfg_path}: metadata is {cfg.get('metadata')!r}, not an object")
    _check_architecture_keys(cfg_path, cfg)


def _check_architecture_keys(cfg_path: Path, cfg: dict[str, Any]) -> None:
    architecture, d_sae = cfg["architecture"], cfg["d_sae"]
    if architecture in ("topk", "batchtopk"):
        k = cfg.get("k")
        if (
            isinstance(k, bool)
            or not isinstance(k, numbers.Real)
            or not float(k).is_integer()
            or not 1 <= k <= d_sae
        ):
            raise SAELensConversionError(
                f"{cfg_path}: k is {k!r}; probe_sae's {FAMILY_OF[architecture]} takes a whole "
                f"number of latents in [1, d_sae={d_sae}]"
            )
        if not isinstance(cfg.get("rescale_acts_by_decoder_norm", False), bool):
            raise SAEFormatError(f"{cfg_path}: rescale_acts_by_decoder_norm is not true or false")
    if architecture == "matching_pursuit":
        steps = cfg.get("max_iterations")
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise SAEFormatError(
                f"{cfg_path}: max_iterations is {steps!r}, not a positive integer or null"
            )
        stop = cfg.get("stop_on_duplicate_support", True)
        if not isinstance(stop, bool):
            raise SAEFormatError(f"{cfg_path}: stop_on_duplicate_support is not true or false")
        if stop and not _MP_STOPS_ON_RESELECT:
            raise SAELensConversionError(
                f"{cfg_path}: stop_on_duplicate_support is true: SAELens stops a token's pursuit "
                "after the first step that adds no new latent, while this probe_sae's MP-SAE "
                "always takes k steps; set it to false (and residual_threshold to 0) if that is "
                "the encoder you want"
            )
        threshold = cfg.get("residual_threshold", 1e-2)
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or threshold > 0:
            raise SAELensConversionError(
                f"{cfg_path}: residual_threshold is {threshold!r}: SAELens stops a token's "
                "pursuit once, after a step, its residual norm is below it (always taking a "
                "first step); probe_sae's MP-SAE has no rule giving the same codes for every "
                "token; set it to 0 to read the SAE without that stop"
            )


def _dtype_name(name: Any) -> str:
    return str(name).removeprefix("torch.")


def _read_weights(folder: Path) -> dict[str, Tensor]:
    """The tensors of ``sae_weights.safetensors``, in float64."""
    weights = folder / SAELENS_WEIGHTS_NAME
    if not weights.is_file():
        raise SAEFormatError(
            f"{folder} holds {SAELENS_CONFIG_NAME} but no {SAELENS_WEIGHTS_NAME}: copy the "
            "SAE's weights next to its config"
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: f.get_tensor(k).to(torch.float64) for k in f.keys()}  # noqa: SIM118
    except PermissionError as err:
        raise SAEFormatError(
            f"cannot read {weights} ({err.strerror or err}): check its permissions"
        ) from err
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SAEFormatError(f"{weights} is corrupted or truncated ({err})") from err


def _check_tensors(weights: Path, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Every tensor the architecture needs, with its shape, and no unknown one."""
    d_in, d_sae, architecture = cfg["d_in"], cfg["d_sae"], cfg["architecture"]
    if "log_threshold" in tensors and architecture == "jumprelu":  # older JumpReLU checkpoints
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    for old in ("scaling_factor", "finetuning_scaling_factor"):  # pre-6.0 decoder scales
        if old in tensors:
            tensors["finetuning_scaling_factor"] = tensors.pop(old)
    shapes = {
        "W_enc": (d_in, d_sae),
        "b_enc": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
        "topk_threshold": (),
        "finetuning_scaling_factor": (d_sae,),
    }
    needed = TENSORS[architecture]
    missing = [name for name in needed if name not in tensors]
    unknown = sorted(set(tensors) - {*needed, "finetuning_scaling_factor"})
    if missing or unknown:
        raise SAEFormatError(
            f"{weights} does not hold the tensors of an SAELens {architecture} SAE: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unexpected {unknown}" if unknown else "")
            + f" (expected {list(needed)})"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != shapes[name]:
            raise SAEFormatError(
                f"{weights}: {name} has shape {tuple(tensor.shape)}, expected {shapes[name]} "
                f"(d_in={d_in}, d_sae={d_sae} in {SAELENS_CONFIG_NAME})"
            )


def _probe_sae_block(cfg_path: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """``metadata["probe_sae"]`` of a folder we wrote, checked; ``None`` for other folders."""
    block = (cfg.get("metadata") or {}).get(METADATA_KEY)
    if block is None:
        return None
    where = f"{cfg_path}: metadata.{METADATA_KEY}"
    if not isinstance(block, dict) or not isinstance(block.get("config"), dict):
        raise SAEFormatError(
            f"{where} is not what probe_sae writes (an object with 'config'); remove it to read "
            "the folder as a plain SAELens SAE"
        )
    if not isinstance(block.get("provenance") or {}, dict):
        raise SAEFormatError(f"{where}.provenance is not an object; remove it or fix it")
    return {**block, "provenance": block.get("provenance") or {}}


def _normalization(
    cfg_path: Path,
    cfg: dict[str, Any],
    block: dict[str, Any] | None,
    norm_scaling_factor: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """(input_mean, input_scale, unfold mean, unfold scale, kind).

    The SAELens weights act on u = x_n · unfold_scale + unfold_mean, x_n our normalised input.
    """
    d_in = cfg["d_in"]
    zeros, ones = torch.zeros(d_in, dtype=torch.float64), torch.ones(d_in, dtype=torch.float64)
    norm = cfg.get("normalize_activations", "none")
    if norm in UNSUPPORTED_NORMALIZATION:
        raise SAELensConversionError(
            f"{cfg_path}: normalize_activations is {norm!r}, which probe_sae cannot represent: "
            f"{UNSUPPORTED_NORMALIZATION[norm]}. probe_sae normalises with one fixed "
            "per-dimension map (x - mean) / scale; supported: 'none', and "
            "'expected_average_only_in' with norm_scaling_factor="
        )
    if norm == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise SAELensConversionError(
                f"{cfg_path}: normalize_activations is 'expected_average_only_in': the SAE was "
                "trained on activations multiplied by a constant that is not in the folder; pass "
                "load_saelens(path, norm_scaling_factor=...) (its value is in SAELens's "
                "pretrained_saes.yaml, or 'scaling_factor' in the run's activation_scaler.json)"
            )
        factor = float(norm_scaling_factor)
        if not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"norm_scaling_factor must be finite and positive, got {factor}")
        return zeros, ones / factor, zeros, ones, "expected_average_only_in"
    if norm != "none":
        raise SAEFormatError(
            f"{cfg_path}: normalize_activations is {norm!r}; SAELens knows 'none', "
            f"'expected_average_only_in' and {sorted(UNSUPPORTED_NORMALIZATION)}"
        )
    if norm_scaling_factor is not None:
        raise ValueError(
            "norm_scaling_factor is for SAEs with normalize_activations "
            f"'expected_average_only_in'; {cfg_path} has 'none': leave it out"
        )
    stats = (block or {}).get("normalization") or {}
    if not isinstance(stats, dict):
        raise SAEFormatError(
            f"{cfg_path}: metadata.{METADATA_KEY}.normalization is not an object; remove it to "
            "read the folder as a plain SAELens SAE"
        )
    kind = str(stats.get("kind", "none"))
    if "mean" not in stats:
        return zeros, ones, zeros, ones, kind
    try:
        mean = torch.tensor(stats["mean"], dtype=torch.float64)
        scale = torch.tensor(stats["scale"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise SAEFormatError(
            f"{cfg_path}: metadata.{METADATA_KEY}.normalization is invalid ({err}); remove it to "
            "read the folder as a plain SAELens SAE"
        ) from err
    if mean.shape != (d_in,) or scale.shape != (d_in,) or not bool((scale > 0).all()):
        raise SAEFormatError(
            f"{cfg_path}: metadata.{METADATA_KEY}.normalization needs {d_in} means and {d_in} "
            "positive scales; remove it to read the folder as a plain SAELens SAE"
        )
    return mean, scale, mean, scale, kind


def _centred_weights(cfg: dict[str, Any], t: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights in the form ``pre = (u - b_dec) @ W_enc + b_enc``, ``u_hat = z @ W_dec + b_dec``,
    with SAELens's decoder conventions folded in (codes unchanged):

    * ``finetuning_scaling_factor`` s (pre-6.0): ``u_hat = (z ⊙ s) @ W_dec + b_dec``, so
      ``W_dec ← s ⊙ W_dec``;
    * ``rescale_acts_by_decoder_norm`` with n = ‖W_dec rows‖ (``topk`` / ``batchtopk``):
      codes are taken on ``pre ⊙ n`` and decoded as ``(z / n) @ W_dec``, so ``W_enc ← W_enc ⊙ n``,
      ``b_enc ← b_enc ⊙ n``, ``W_dec ← W_dec / n`` (SAELens's ``_fold_norm_topk``);
    * ``apply_b_dec_to_input = false``: ``b_enc ← b_enc + b_dec @ W_enc`` (matching pursuit,
      whose decode then adds no ``b_dec``: ``b_dec ← 0``).
    """
    w = dict(t)
    if "finetuning_scaling_factor" in w:
        w["W_dec"] = w["W_dec"] * w.pop("finetuning_scaling_factor").unsqueeze(1)
    if cfg.get("rescale_acts_by_decoder_norm", False):
        norms = w["W_dec"].norm(dim=1).clamp_min(1e-8)  # SAELens's get_W_dec_norm
        w["W_enc"], w["b_enc"] = w["W_enc"] * norms, w["b_enc"] * norms
        w["W_dec"] = w["W_dec"] / norms.unsqueeze(1)
    if not cfg.get("apply_b_dec_to_input", True):
        if "W_enc" in w:
            w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
        else:
            w["b_dec"] = torch.zeros_like(w["b_dec"])
    return w


def _unfold(
    cfg_path: Path, cfg: dict[str, Any], w: dict[str, Tensor], mean: Tensor, scale: Tensor
) -> dict[str, Tensor]:
    """Our weights (``b_pre``, ``D``, ``W_enc`` (d_sae, d_in)) from centred SAELens weights that act
    on ``u = x_n · scale + mean``: ``b_pre = (b_dec - mean) / scale``, ``D = W_dec / scale``,
    ``W_enc = (scale ⊙ W_enc)ᵀ``."""
    if "W_enc" not in w and not bool((scale == 1).all()):
        raise SAELensConversionError(
            f"{cfg_path}: metadata.{METADATA_KEY}.normalization divides by a per-dimension scale, "
            "which a matching-pursuit SAE (encoder tied to its decoder) cannot fold; remove it"
        )
    out = {"b_pre": (w["b_dec"] - mean) / scale, "atoms": w["W_dec"] / scale}
    if "W_enc" in w:
        out["W_enc"] = (w["W_enc"] * scale.unsqueeze(1)).T
        out["b_enc"] = w["b_enc"]
    for name in ("threshold", "topk_threshold"):
        if name in w:
            out[name] = w[name]
    return out


def _family(cfg: dict[str, Any], weights: dict[str, Tensor], block: dict[str, Any] | None) -> str:
    family = FAMILY_OF[cfg["architecture"]]
    if family == "jumprelu" and block and block["config"].get("family") == "batchtopk":
        theta = weights["threshold"]
        if bool((theta == theta[0]).all()):
            return "batchtopk"
    return family


def _config(
    cfg_path: Path, cfg: dict[str, Any], weights: dict[str, Tensor], block: dict[str, Any] | None
) -> SAEConfig:
    """Our family config: the one we wrote (training hyper-parameters kept) when it matches the
    architecture, else the family's defaults; sizes and ``k`` always from ``cfg.json``."""
    family, d_sae = _family(cfg, weights, block), cfg["d_sae"]
    config: SAEConfig | None = None
    if block is not None and block["config"].get("family") == family:
        try:
            config = from_dict(SAEConfig, block["config"])
        except ConfigError as err:
            raise SAEFormatError(
                f"{cfg_path}: metadata.{METADATA_KEY}.config is invalid ({err}); remove "
                f"metadata.{METADATA_KEY} to read the folder as a plain SAELens SAE"
            ) from err
    if config is None:
        defaults = {
            "relu": ReLUConfig,
            "topk": TopKConfig,
            "batchtopk": BatchTopKConfig,
            "jumprelu": JumpReLUConfig,
            "mp": MPConfig,
        }
        config = defaults[family]()
    fields: dict[str, Any] = {"n_concepts": d_sae}
    if hasattr(config, "archetypal"):
        fields["archetypal"] = None  # an archetypal SAE written with its atoms materialised
    if family in ("topk",) or cfg["architecture"] == "batchtopk":
        fields["k"] = int(cfg["k"])
    if family == "mp":
        fields["k"] = cfg.get("max_iterations") or cfg["d_in"]  # SAELens's default: d_in
        if _MP_STOPS_ON_RESELECT:
            fields["stop_on_reselect"] = bool(cfg.get("stop_on_duplicate_support"))
            fields["residual_threshold"] = 0.0
    try:
        return dataclasses.replace(config, **fields)
    except (ConfigError, TypeError, ValueError) as err:
        raise SAEFormatError(f"{cfg_path} describes no SAE probe_sae can build: {err}") from err


def _state(sae: SAE, w: dict[str, Tensor], mean: Tensor, scale: Tensor) -> dict[str, Tensor]:
    """``sae``'s state dict from our weights ``w`` (float64)."""
    state = {
        "b_pre": w["b_pre"],
        "input_mean": mean,
        "input_scale": scale,
        "decoder.weight": w["atoms"],
    }
    if "W_enc" in w:
        state["W_enc"], state["b_enc"] = w["W_enc"], w["b_enc"]
    if isinstance(sae, JumpReLUSAE):
        # SAELens's ReLU(pre)·1[pre > θ] is ReLU(pre) for θ <= 0: our θ = exp(log θ) = 0 there
        state["log_threshold"] = w["threshold"].clamp_min(0).log()
    if isinstance(sae, BatchTopKSAE):
        theta = w["topk_threshold"] if "topk_threshold" in w else w["threshold"][0]
        state["threshold"] = theta.reshape(())
        # an untrained SAELens BatchTopK has θ = 0: refuse to encode, as ours does
        state["threshold_updates"] = torch.tensor(int(bool(theta > 0)), dtype=torch.long)
    return state


def _saelens_provenance(cfg: dict[str, Any]) -> dict[str, Any]:
    """What ``sae.provenance["saelens"]`` keeps of a foreign folder's ``cfg.json``."""
    kept = ("architecture", "normalize_activations", "apply_b_dec_to_input", "reshape_activations")
    out = {k: cfg[k] for k in kept if k in cfg}
    out["metadata"] = dict(cfg.get("metadata") or {})
    return out


def _warn_if_not_unit_norm(sae: SAE, folder: Path) -> None:
    if not type(sae).needs_unit_norm:
        return
    norms = sae.dictionary.detach().double().norm(dim=1)
    if bool(((norms - 1).abs() > 1e-4).any()):
        warnings.warn(
            f"{folder}: the decoder rows of this {sae.family} SAE are not unit norm (norms "
            f"{float(norms.min()):.4g} to {float(norms.max()):.4g}); encode and decode are exact, "
            "but sae.apply_constraints() (called after every training step) would normalise them "
            "and change the codes: do not train it further as is",
            UserWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------------- write
def save_saelens(sae: SAE, path: str | Path, *, materialize_archetypal: bool = False) -> Path:
    """Write ``sae`` as an SAELens 6.x folder (``cfg.json`` + ``sae_weights.safetensors``).

    ``SAE.load_from_disk(path)`` in SAELens then gives the same codes and reconstructions from
    raw activations (the normalisation is folded into the weights); :func:`load_saelens` gives
    back this SAE. ReLU → ``standard``, TopK → ``topk``, JumpReLU → ``jumprelu``, BatchTopK →
    ``jumprelu`` with its inference threshold on every latent, MP-SAE → ``matching_pursuit``
    when its normalisation has no per-dimension scale.

    Archetypal dictionaries (A-SAE / RA-SAE) have no SAELens counterpart: they raise
    :class:`SAELensConversionError` unless ``materialize_archetypal=True``, which writes the
    atoms ``W·C (+ Λ)`` as a plain decoder (same codes, but the candidates and the convex-hull
    constraint are lost). Both files are replaced as a whole, as by :func:`save_sae`; raises
    :class:`~probe_sae.saes.io.SAESaveError` naming the fix when the folder cannot be written.
    """
    cfg, tensors = _export(sae, materialize_archetypal)
    folder = Path(path)
    text = json.dumps(cfg, indent=2) + "\n"
    writers = {
        SAELENS_WEIGHTS_NAME: lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
        SAELENS_CONFIG_NAME: lambda tmp: Path(tmp).write_text(text),
    }
    created: list[Path] = []
    try:
        created = _missing_folders(folder)
        _check_target(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_files(folder, writers)
    except BaseException as err:
        _remove_empty(created)
        if isinstance(err, OSError) and not isinstance(err, SAESaveError):
            raise _save_error(folder, err) from err
        raise
    return folder


def _check_target(folder: Path) -> None:
    """Refuse a file, a folder with a ``config.json``, and one whose ``cfg.json`` is not an SAE's."""
    if folder.exists() and not folder.is_dir():
        raise SAESaveError(
            errno.ENOTDIR,
            f"cannot save the SAE to {folder}: it is a file, and an SAELens SAE is a folder; "
            "pass a folder path, or move the file away",
        )
    if (folder / CONFIG_NAME).exists():
        raise SAESaveError(
            errno.EEXIST,
            f"cannot save the SAE to {folder} in SAELens format: the folder holds a {CONFIG_NAME} "
            "(a probe_sae SAE, or a model), which load_sae would read instead; save it into its "
            "own folder",
        )
    existing = folder / SAELENS_CONFIG_NAME
    if not existing.is_file():
        return
    try:
        cfg = json.loads(existing.read_text())
    except (ValueError, UnicodeDecodeError):
        return  # an unreadable config: nothing worth keeping
    if not isinstance(cfg, dict) or "d_sae" not in cfg:
        raise SAESaveError(
            errno.EEXIST,
            f"cannot save the SAE to {folder}: its {SAELENS_CONFIG_NAME} is not an SAELens SAE's "
            "and would be overwritten; save the SAE into its own folder",
        )


def _check_exportable(sae: SAE, materialize_archetypal: bool) -> None:
    if sae.family not in ARCHITECTURE_OF or not isinstance(
        sae, (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MPSAE)
    ):
        raise SAELensConversionError(
            f"{sae.label} SAEs have no SAELens counterpart (SAELens reads "
            f"{sorted(set(ARCHITECTURE_OF.values()))}, written from probe_sae's "
            f"{sorted(ARCHITECTURE_OF)}); save it in probe_sae's format: sae.save_pretrained(path)"
        )
    if sae.config.archetypal_dictionary is not None and not materialize_archetypal:
        raise SAELensConversionError(
            f"{sae.label}: archetypal dictionaries (A-SAE / RA-SAE, D = W·C + Λ over candidate "
            "points) have no SAELens counterpart; save it in probe_sae's format "
            "(sae.save_pretrained(path)), or write its atoms as a plain decoder with "
            "save_saelens(sae, path, materialize_archetypal=True) (same codes; the candidates and "
            "the convex-hull constraint are lost)"
        )
    if isinstance(sae, MPSAE) and getattr(sae.config, "residual_threshold", 0) > 0:
        raise SAELensConversionError(
            "this MP-SAE stops a token once its residual norm is below residual_threshold "
            f"({sae.config.residual_threshold}, {getattr(sae.config, 'threshold_mode', '')}), "
            "checked before every step; SAELens's matching_pursuit checks an absolute threshold "
            "only after a step (always taking a first one), so the codes could differ; save it "
            "in probe_sae's format (sae.save_pretrained(path)), or set residual_threshold=0"
        )
    if isinstance(sae, MPSAE) and not bool((sae.input_scale == 1).all()):
        raise SAELensConversionError(
            f"this MP-SAE's normalisation ({sae.normalization!r}) divides by a per-dimension "
            "scale, and SAELens's matching_pursuit encoder is tied to its decoder, so the scale "
            "cannot be folded into the weights without changing the codes; save it in probe_sae's "
            "format (sae.save_pretrained(path)), or train it with a normalisation that only "
            "centres"
        )
    if isinstance(sae, BatchTopKSAE):
        if int(sae.threshold_updates) == 0:
            raise SAELensConversionError(
                "this BatchTopKSAE has no inference threshold yet (it is estimated during "
                "training), and SAELens encodes with it: train it first"
            )
        if float(sae.threshold) < 0:
            raise SAELensConversionError(
                f"this BatchTopKSAE's threshold θ = {float(sae.threshold):.4g} < 0: SAELens's "
                "jumprelu applies ReLU before the threshold and would zero the negative codes "
                "this SAE keeps; save it in probe_sae's format (sae.save_pretrained(path))"
            )


@torch.no_grad()
def _export(sae: SAE, materialize_archetypal: bool) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(``cfg.json`` object, tensors) of ``sae`` as an SAELens SAE (see the module docstring)."""
    _check_exportable(sae, materialize_archetypal)
    dtype = sae.b_pre.dtype
    mean, scale = sae.input_mean.double(), sae.input_scale.double()
    atoms = sae.dictionary.detach().double()
    tensors = {
        "W_dec": atoms * scale,
        "b_dec": mean + scale * sae.b_pre.double(),
    }
    if not isinstance(sae, MPSAE):
        tensors["W_enc"] = (sae.W_enc.double() / scale).T
        tensors["b_enc"] = sae.b_enc.double()
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    if isinstance(sae, JumpReLUSAE):
        tensors["threshold"] = sae.threshold.detach().clone()  # the θ ours compares against
    if isinstance(sae, BatchTopKSAE):
        tensors["threshold"] = sae.threshold.detach().expand(sae.n_concepts).clone()
    tensors = {k: v.to("cpu").contiguous() for k, v in tensors.items()}
    architecture = ARCHITECTURE_OF[sae.family]
    origin = sae.provenance.get("saelens") or {}
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": sae.d_model,
        "d_sae": sae.n_concepts,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": origin.get("reshape_activations", "none"),
    }
    if architecture == "topk":
        cfg.update(k=sae.config.k, rescale_acts_by_decoder_norm=False)  # type: ignore[attr-defined]
    if architecture == "matching_pursuit":
        stop = bool(getattr(sae.config, "stop_on_reselect", False))
        cfg.update(residual_threshold=0.0, max_iterations=sae.k, stop_on_duplicate_support=stop)
    cfg["metadata"] = _metadata(sae, origin)
    return cfg, tensors


def _metadata(sae: SAE, origin: dict[str, Any]) -> dict[str, Any]:
    """SAELens ``metadata``: a read folder's, our model and layer, and our own block."""
    metadata = dict(origin.get("metadata") or {})
    metadata.pop(METADATA_KEY, None)
    if "model" in sae.provenance:
        metadata.setdefault("model_name", str(sae.provenance["model"]))
    if "layer" in sae.provenance:
        metadata.setdefault("hook_name", str(sae.provenance["layer"]))
    if (_version_major(metadata.get("sae_lens_version") or "") or 0) < 6:
        metadata["sae_lens_version"] = SAELENS_VERSION
    metadata.setdefault("sae_lens_training_version", None)
    normalization: dict[str, Any] = {"kind": sae.normalization}
    if not (bool((sae.input_mean == 0).all()) and bool((sae.input_scale == 1).all())):
        normalization["mean"] = sae.input_mean.double().tolist()
        normalization["scale"] = sae.input_scale.double().tolist()
    metadata[METADATA_KEY] = {
        "format": SAE_FORMAT,
        "format_version": SAE_FORMAT_VERSION,
        "probe_sae_version": __version__,
        "config": to_dict(sae.config),
        "normalization": normalization,
        "provenance": dict(sae.provenance),
    }
    return metadata
