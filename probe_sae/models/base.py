"""`VisionModel`: a live vision model wrapped by nnsight, with its preprocessing, token layout,
hookable layers and (for CLIP-like models) its text tower.

Every family loader (open_clip, Hugging Face transformers, timm, `wrap`) builds one of these;
`probe_sae.hooks` reads and edits its layers. Forward passes that carry interventions or
captures go through one nnsight trace (`runner.run_traced`); a plain forward with nothing
attached calls the model directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .images import ImageBatch, InputSpec, Preprocess, to_pixels
from .layers import (
    LayerInfo,
    Site,
    dry_run,
    find_blocks,
    first_tensor,
    from_tokens,
    replace_first,
    resolve_layer,
    to_tokens,
)
from .layout import TokenLayout, TokenSelection, select_without_layout
from .runner import Step, Where, envoy_at, run_traced

#: ``forward(module, pixels_BCHW)`` -> the model's image output (embedding, pooled features, logits).
ImageForward = Callable[[nn.Module, Tensor], Any]


class TextTower(Protocol):
    """The text side of a CLIP-like model."""

    def encode(self, prompts: list[str]) -> Tensor:
        """(P, e) unnormalised text embeddings."""
        ...

    @property
    def logit_scale(self) -> Tensor:
        """The multiplier applied to cosine similarities (already exponentiated)."""
        ...

    @property
    def logit_bias(self) -> Tensor | None:
        """SigLIP's additive logit bias, ``None`` for CLIP."""
        ...


@dataclass(frozen=True)
class Intervention:
    """An edit of one layer's value during forwards: ``fn`` maps the selected tokens
    (B, T_sel, D) batch-first to a tensor of the same shape."""

    layer: str
    where: Where
    fn: Callable[[Tensor], Tensor]
    tokens: TokenSelection = "all"


@dataclass(frozen=True)
class Read:
    """A value to keep from one layer: ``fn(tokens_BTD, token_indices or None for all)`` is
    stored under ``key``."""

    key: str
    layer: str
    where: Where
    fn: Callable[[Tensor, Tensor], Any]
    tokens: TokenSelection = "all"


def _image_output(output: Any) -> Any:
    """The tensor a forward returns: transformers' ``ModelOutput`` gives its ``pooler_output``."""
    pooled = getattr(output, "pooler_output", None)
    return pooled if isinstance(pooled, Tensor) else output


class VisionModel:
    """A vision model ready for hooking. Build with `probe_sae.load_model` or `probe_sae.wrap`.

    ``model(images)`` returns the family's image output (CLIP/SigLIP image embeddings, DINOv2's
    pooled CLS, timm's head output) with every active `probe_sae.hooks` intervention applied.
    ``images`` is a (B, C, H, W) float tensor already preprocessed, or PIL images.

    What `probe_sae.hooks` and `probe_sae.interventions` build on: `site` (the hookable value
    at a layer), `add_intervention` / `remove_intervention` and the read-only `interventions`,
    `run` (one traced forward applying them, with reads) and `token_indices`.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        forward: ImageForward,
        input_spec: InputSpec,
        preprocess: Preprocess | None = None,
        layout: TokenLayout | None = None,
        blocks: Sequence[str] | str | None = None,
        blocks_under: str = "",
        text: TextTower | None = None,
        pool_layer: str | None = None,
    ) -> None:
        self.module = module
        self.pool_layer = pool_layer
        self.name = name
        #: the ``load_model`` spec that rebuilds this model (``None`` for ``wrap``-ped modules)
        self.spec: str | None = None
        #: whether the weights are a random initialisation (no pretrained tag or checkpoint)
        self.random_weights = False
        #: the torch seed the random initialisation was drawn under (``None`` for loaded weights)
        self.seed: int | None = None
        self.input_spec = input_spec
        self.layout = layout
        self.text = text
        self._forward = forward
        self._preprocess = preprocess
        self._interventions: list[Intervention] = []
        self._layers: dict[str, LayerInfo] | None = None
        self._blocks: list[str] = []
        if isinstance(blocks, str):
            blocks = [f"{blocks}.{i}" for i in range(len(module.get_submodule(blocks)))]
        self._block_candidates = list(blocks) if blocks is not None else find_blocks(module, blocks_under)
        import nnsight  # here, not at module level: importing nnsight takes seconds

        # nnsight installs an inert controller as every submodule's forward (no torch hooks).
        self.envoy = nnsight.NNsight(module)

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        layout = "no token layout" if self.layout is None else (
            f"{self.layout.n_tokens} tokens = {self.layout.n_prefix} prefix + "
            f"{self.layout.grid[0]}×{self.layout.grid[1]} patches"
        )
        return f"VisionModel({self.name!r}, input {self.input_spec.describe()}, {layout})"

    @property
    def device(self) -> torch.device:
        param = next(self.module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for param in self.module.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.get_default_dtype()

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the pixel batches the model's preprocessing produces."""
        return self.input_spec.size

    def to(self, device: torch.device | str) -> VisionModel:
        self.module.to(device)
        return self

    def preprocess(self, images: ImageBatch) -> Tensor:
        """PIL image(s) -> (B, C, H, W) float tensor, with the model library's own transforms."""
        return to_pixels(images, self.input_spec, self._preprocess, self.name, None, None)

    def to_pixels(self, images: ImageBatch) -> Tensor:
        """A checked pixel batch on the model's device from a tensor batch or PIL images."""
        return to_pixels(images, self.input_spec, self._preprocess, self.name, self.device, self.dtype)

    def _call(self, pixels: Tensor) -> Any:
        """The plain forward on (B, C, H, W) pixels: no interventions, no trace."""
        return _image_output(self._forward(self.module, pixels))

    # ------------------------------------------------------------------ layers
    def layers(self) -> dict[str, LayerInfo]:
        """Every module that runs on images, in execution order, with per-image output shapes.

        Measured once by a dry run on a dummy batch, then cached.
        """
        return dict(self._layer_map())

    def _layer_map(self) -> dict[str, LayerInfo]:
        if self._layers is None:
            n_tokens = self.layout.n_tokens if self.layout is not None else 0
            batch = 3 if n_tokens == 2 else 2
            h, w = self.input_spec.size
            dummy = torch.zeros(batch, self.input_spec.channels, h, w, device=self.device, dtype=self.dtype)
            seq_first = self.layout.sequence_first if self.layout is not None else False
            self._layers = dry_run(self.module, self._call, dummy, seq_first)
            self._blocks = [name for name in self._block_candidates if name in self._layers]
        return self._layers

    @property
    def blocks(self) -> list[str]:
        """Names of the transformer blocks (``"blocks.i"`` is an alias of ``blocks[i]``)."""
        self._layer_map()
        return list(self._blocks)

    def resolve(self, layer: str | int) -> str:
        """Full module name of ``layer`` (a name, ``"blocks.i"`` or a block index)."""
        layers = self._layer_map()
        if isinstance(layer, str) and layer in layers:
            return layer
        return resolve_layer(layer, layers, self._blocks, self.module, self.name)

    def layer_info(self, layer: str | int) -> LayerInfo:
        return self._layer_map()[self.resolve(layer)]

    def site(self, layer: str | int, where: Where = "output") -> Site:
        """The hookable value at ``layer``'s output (or first input, ``where="input"``): its
        kind (tokens / vector / spatial), shape per image and width.

        Raises:
            ValueError: the layer runs more than once per forward, or its value is not a
                (B, T, D), (B, D) or (B, C, h, w) tensor.
        """
        return self._site(self.resolve(layer), where)

    def _site(self, layer: str, where: Where) -> Site:
        info = self._layer_map()[layer]
        if info.calls > 1:
            raise ValueError(
                f"Layer {layer!r} of {self.name} runs {info.calls} times per forward pass; hooks "
                f"attach to modules that run once. Pick its parent or a child module."
            )
        site = info.output if where == "output" else info.input
        if site is None or site.kind == "other":
            shape = None if site is None else site.shape
            raise ValueError(
                f"The {where} of {layer!r} (shape {shape}) is not a (B, T, D), (B, D) or "
                f"(B, C, h, w) tensor, so it cannot be hooked; pick another layer from model.layers()."
            )
        return site

    def token_indices(
        self, tokens: TokenSelection, site: Site, image_size: tuple[int, int]
    ) -> Tensor | None:
        """Positions chosen by ``tokens`` in a layer with ``site``'s token count; ``None`` for all."""
        if isinstance(tokens, str) and tokens == "all":
            return None
        if self.layout is None or site.kind == "spatial":
            return select_without_layout(tokens, site.n_tokens, self.name)
        layout = self.layout.for_image_size(*image_size)
        n_tokens = site.n_tokens
        if site.kind == "tokens" and site.n_tokens == self.layout.n_tokens:
            n_tokens = layout.n_tokens  # same layer at this input size
        return layout.indices(tokens, n_tokens, self.name, self.pool_layer)

    # ------------------------------------------------------------------ interventions
    @property
    def interventions(self) -> tuple[Intervention, ...]:
        """The interventions applied to every forward, in application order (read-only; use
        `probe_sae.hooks.intervene` to add one for the length of a ``with`` block)."""
        return tuple(self._interventions)

    def add_intervention(self, entry: Intervention) -> Intervention:
        """Apply ``entry`` to every forward from now on, after the active ones; returns the entry
        stored (its layer resolved to the full module name), to pass to `remove_intervention`.

        The layer, ``where`` and token selection are checked now, before any forward runs.
        Pair every call with `remove_intervention` in a ``finally`` (or use
        `probe_sae.hooks.intervene`): an intervention outlives nothing that made it.
        """
        name = self.resolve(entry.layer)
        if name != entry.layer:
            entry = dataclasses.replace(entry, layer=name)
        site = self._site(name, entry.where)
        self.token_indices(entry.tokens, site, self.input_size)  # validate the selection now
        self._interventions.append(entry)
        return entry

    def remove_intervention(self, entry: Intervention) -> None:
        """Stop applying ``entry`` (matched by identity; nothing happens when it is not active).
        Nested interventions may be removed in any order."""
        self._interventions[:] = [iv for iv in self._interventions if iv is not entry]

    # ------------------------------------------------------------------ running
    def __call__(self, images: ImageBatch) -> Any:
        """The image output with the active interventions applied."""
        pixels = self.to_pixels(images)
        if not self._interventions:
            return self._call(pixels)
        result, _ = self.run(pixels, reads=(), stop=False)
        return result

    def run(self, pixels: Tensor, reads: Sequence[Read], stop: bool) -> tuple[Any, dict[str, Any]]:
        """One traced forward applying the active interventions and ``reads``.

        With ``stop`` the forward ends right after the deepest read. Returns
        ``(output or None, {read.key: value})``.
        """
        image_size = (pixels.shape[-2], pixels.shape[-1])
        sites: dict[tuple[str, Where], dict[str, list]] = {}
        for iv in self._interventions:
            sites.setdefault((iv.layer, iv.where), {"edits": [], "reads": []})["edits"].append(iv)
        for rd in reads:
            sites.setdefault((rd.layer, rd.where), {"edits": [], "reads": []})["reads"].append(rd)
        info = self._layer_map()

        def order(key: tuple[str, Where]) -> int:
            layer, where = key
            return info[layer].order_in if where == "input" else info[layer].order_out

        keys = sorted(sites, key=order)
        if stop and reads:
            last = max(order((rd.layer, rd.where)) for rd in reads)
            keys = [k for k in keys if order(k) <= last]
        steps = [
            self._step(layer, where, sites[(layer, where)]["edits"], sites[(layer, where)]["reads"], image_size)
            for layer, where in keys
        ]
        return run_traced(self.envoy, self._call, pixels, steps, stop=stop and bool(reads))

    def _step(
        self,
        layer: str,
        where: Where,
        edits: list[Intervention],
        reads: list[Read],
        image_size: tuple[int, int],
    ) -> Step:
        """The trace step at one location: edits in entry order, then the reads of the result."""
        site = self._site(layer, where)
        envoy = envoy_at(self.envoy, layer)
        unpack = where == "output"  # an input is served as the bare first input
        edit_plan = [(iv.fn, self.token_indices(iv.tokens, site, image_size)) for iv in edits]
        read_plan = [(rd, self.token_indices(rd.tokens, site, image_size)) for rd in reads]

        def edit(value: Any) -> Any:
            hidden = first_tensor(value) if unpack else value
            tokens_BTD = to_tokens(hidden, site)
            for fn, idx in edit_plan:
                tokens_BTD = _apply(fn, tokens_BTD, idx, layer, self.name)
            new = from_tokens(tokens_BTD, site, hidden)
            return replace_first(value, new) if unpack else new

        def read(value: Any) -> dict[str, Any]:
            hidden = first_tensor(value) if unpack else value
            tokens_BTD = to_tokens(hidden, site)
            return {rd.key: rd.fn(tokens_BTD, idx) for rd, idx in read_plan}

        return Step(
            envoy,
            where,
            key=f"{layer}:{where}",
            edit=edit if edit_plan else None,
            read=read if read_plan else None,
        )

    # ------------------------------------------------------------------ text tower
    def _text(self) -> TextTower:
        if self.text is None:
            raise ValueError(
                f"{self.name} has no text tower; zero-shot logits need a CLIP-like model "
                f"(open_clip, or hf: CLIPModel / SiglipModel checkpoints)."
            )
        return self.text

    def encode_image(self, images: ImageBatch, normalize: bool = False) -> Tensor:
        """(B, e) image embeddings (the model output), L2-normalised when ``normalize``."""
        out = self(images)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, prompts: str | Sequence[str], normalize: bool = False) -> Tensor:
        """(P, e) text embeddings of ``prompts`` from the CLIP-like model's text tower."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = self._text().encode(prompts)
        return F.normalize(out, dim=-1) if normalize else out

    @property
    def logit_scale(self) -> Tensor:
        return self._text().logit_scale

    @property
    def logit_bias(self) -> Tensor | None:
        return self._text().logit_bias

    def zero_shot_logits(self, images: ImageBatch, prompts: Sequence[str] | Tensor) -> Tensor:
        """(B, P) logits ``scale · cos(image, text) (+ bias)`` as the model computes them
        (Radford et al. 2021; SigLIP adds its learned bias, Zhai et al. 2023).

        ``prompts`` are strings or precomputed (P, e) text embeddings.
        """
        text = self.encode_text(prompts, normalize=True) if not isinstance(prompts, Tensor) else F.normalize(prompts, dim=-1)
        image = self.encode_image(images, normalize=True)
        logits = self.logit_scale * image @ text.to(image.dtype).T
        bias = self.logit_bias
        return logits + bias if bias is not None else logits


def _apply(
    fn: Callable[[Tensor], Tensor],
    tokens_BTD: Tensor,
    idx: Tensor | None,
    layer: str,
    model_name: str,
) -> Tensor:
    """``tokens_BTD`` with ``fn`` applied to the tokens at ``idx`` (all when ``None``), out of place."""
    if idx is not None:
        idx = idx.to(tokens_BTD.device)
    chosen = tokens_BTD if idx is None else tokens_BTD.index_select(1, idx)
    new = fn(chosen)
    if not isinstance(new, Tensor):
        raise TypeError(
            f"The intervention function at {layer!r} of {model_name} must return a tensor shaped "
            f"like its input {tuple(chosen.shape)}; it returned {type(new).__name__}."
        )
    if new.shape != chosen.shape:
        raise ValueError(
            f"The intervention function at {layer!r} of {model_name} returned shape "
            f"{tuple(new.shape)}; it must return the shape it was given, {tuple(chosen.shape)} "
            f"(B, tokens, d)."
        )
    if idx is None:
        return new
    return tokens_BTD.index_copy(1, idx, new.to(tokens_BTD.dtype))
