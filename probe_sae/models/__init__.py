"""Vision models made hookable: `load_model(spec)` for open_clip / transformers / timm models and
`wrap(module)` for any other ``nn.Module``; both return a `VisionModel`."""

from .base import Intervention, Read, TextTower, VisionModel
from .images import InputSpec
from .layers import LayerInfo, Site, UnknownLayerError
from .layout import TokenLayout
from .spec import ModelSpec, load_model, parse_spec, register_loader
from .wrap import wrap

__all__ = [
    "InputSpec",
    "Intervention",
    "LayerInfo",
    "ModelSpec",
    "Read",
    "Site",
    "TextTower",
    "TokenLayout",
    "UnknownLayerError",
    "VisionModel",
    "load_model",
    "parse_spec",
    "register_loader",
    "wrap",
]
