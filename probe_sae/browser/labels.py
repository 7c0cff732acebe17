"""Text labels for concepts of CLIP-like models, through the image embeddings of their top images.

For a model with a text tower (open_clip, Hugging Face CLIP / SigLIP), each word of a vocabulary
is embedded with the prompt template (``"a photo of a {}."``), and each streamed image with the
model's own image embedding; both are L2-normalised. A concept's score for a word is

    mean over its top images of cos(image, word)  −  mean over all images of cos(image, word),

i.e. how much more its top images match the word than images do on average (the subtraction
removes words that match every image, a known hubness effect of CLIP spaces). Its labels are the
words with the highest scores. This labels what the concept's *top images* show, which can be
more than the concept itself (a concept for "wheel" has top images of cars); pushing the atom
through the rest of the network is the alternative this module does not take, because the later
layers are not linear in one token and the atom alone is far from the data those layers see.

Only the cosines of images that are in some concept's running top-k are kept (`PromptScores`),
so memory stays bounded by ``C × k`` rows whatever the number of images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from probe_sae.models import VisionModel

#: the prompt a vocabulary word is put in
PROMPT = "a photo of a {}."

#: the built-in vocabulary: common objects, scenes, colours, textures and shapes
VOCABULARY: tuple[str, ...] = (
    # colours
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
    "grey", "gold",
    # textures and patterns
    "stripes", "dots", "checkerboard", "grass", "fur", "wood", "metal", "glass", "water", "sky",
    "sand", "snow", "brick", "fabric", "leaves", "rock", "text", "smooth surface",
    # shapes
    "circle", "square", "triangle", "line", "curve", "edge", "corner", "grid",
    # animals
    "dog", "cat", "bird", "horse", "cow", "sheep", "fish", "insect", "elephant", "bear",
    # people
    "person", "face", "eye", "hand", "hair", "crowd",
    # vehicles
    "car", "bus", "truck", "bicycle", "motorcycle", "boat", "airplane", "train", "wheel",
    # objects
    "chair", "table", "bed", "sofa", "bottle", "cup", "book", "clock", "lamp", "window", "door",
    "screen", "phone", "ball", "hat", "shoe", "bag", "flower", "tree", "fruit", "food", "plate",
    "sign", "logo",
    # scenes
    "building", "road", "street", "house", "room", "kitchen", "field", "forest", "mountain",
    "beach", "sea", "city", "night", "indoor scene", "outdoor scene",
)  # fmt: skip


def read_vocabulary(path: str | Path) -> list[str]:
    """Words (or phrases) from a text file, one a line; blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    words = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not words:
        raise ValueError(f"{path} holds no words: write one word or phrase per line.")
    return words


def has_text_tower(model: VisionModel) -> bool:
    """Whether ``model`` can embed text (a CLIP-like model with a text tower)."""
    return getattr(model, "text", None) is not None


@torch.no_grad()
def text_embeddings(
    model: VisionModel, words: Sequence[str], prompt: str = PROMPT, batch: int = 64
) -> Tensor:
    """(V, e) L2-normalised text embeddings of ``prompt.format(word)`` for each word."""
    prompts = [prompt.format(w) for w in words]
    parts = [
        model.encode_text(prompts[s : s + batch], normalize=True)
        for s in range(0, len(prompts), batch)
    ]
    return torch.cat(parts).float().cpu()


@torch.no_grad()
def image_text_cosines(model: VisionModel, pixels: Tensor, text_VE: Tensor) -> Tensor:
    """(B, V) cosine of each image's embedding (the model's output) with each text embedding."""
    image = F.normalize(model.encode_image(pixels).float().cpu(), dim=-1)
    return image @ text_VE.T


class PromptScores:
    """Running image–word cosines: their mean over all images, and the rows of the images that
    sit in some concept's top-k (see module docstring)."""

    def __init__(self, n_words: int) -> None:
        self.ids = torch.zeros(0, dtype=torch.long)  # sorted image positions
        self.rows = torch.zeros(0, n_words)
        self.sum = torch.zeros(n_words, dtype=torch.float64)
        self.count = 0

    def add(self, positions_B: Tensor, cos_BV: Tensor, keep: Tensor) -> None:
        """Add the images at ``positions`` with their cosines; then keep the rows of the images
        in ``keep`` (e.g. every concept's top-k positions) only."""
        self.sum += cos_BV.double().sum(dim=0)
        self.count += cos_BV.shape[0]
        ids = torch.cat([self.ids, positions_B.long()])
        rows = torch.cat([self.rows, cos_BV.float()])
        wanted = torch.isin(ids, keep.unique())
        order = ids[wanted].argsort()
        self.ids, self.rows = ids[wanted][order], rows[wanted][order]

    def concept_scores(self, top_index_Ck: Tensor) -> Tensor:
        """(C, V): mean cosine over each concept's top images minus the mean over all images."""
        mean = (self.sum / max(self.count, 1)).float()
        valid = top_index_Ck >= 0
        at = torch.searchsorted(self.ids, top_index_Ck.clamp_min(0)).clamp_max(
            max(len(self.ids) - 1, 0)
        )
        if len(self.ids) == 0:
            return torch.zeros(top_index_Ck.shape[0], mean.numel())
        gathered = self.rows[at] * valid[..., None]
        n = valid.sum(dim=1, keepdim=True).clamp_min(1)
        scores = gathered.sum(dim=1) / n - mean
        return scores.masked_fill(~valid.any(dim=1, keepdim=True), 0.0)


def top_labels(
    scores_CV: Tensor, words: Sequence[str], n: int = 3
) -> list[list[tuple[str, float]]]:
    """Per concept its ``n`` best words with their scores."""
    n = min(n, scores_CV.shape[1])
    values, index = scores_CV.topk(n, dim=1)
    return [
        [(words[int(j)], float(v)) for v, j in zip(vs, js, strict=True)]
        for vs, js in zip(values.tolist(), index.tolist(), strict=True)
    ]
