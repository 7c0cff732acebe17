"""What the dataset sources share: importing an optional package with the install line in the
error, and decoding one stored image (PIL image, encoded bytes, ``{"bytes", "path"}`` or a path)
into an RGB PIL image, or ``None`` when it does not decode."""

from __future__ import annotations

import importlib
import io
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: how to get the optional packages of the dataset sources
INSTALL_EXTRA = 'pip install "probe_sae[datasets]"'


def require(package: str, what: str) -> ModuleType:
    """Import ``package`` (``datasets``, ``webdataset``), or raise an ImportError saying that
    ``what`` needs it and how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise ImportError(
            f"{what} needs the optional package {package!r}, which is not installed: "
            f"{INSTALL_EXTRA} (or pip install {package})"
        ) from err


def decode_image(value: Any) -> PILImage | None:
    """An RGB PIL image from a stored image, or ``None`` when it is missing or does not decode.

    ``value``: a PIL image, encoded bytes, a ``{"bytes": ..., "path": ...}`` dict (how
    ``datasets`` stores an ``Image`` feature undecoded) or a file path."""
    from PIL import Image, UnidentifiedImageError

    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        value = data if data is not None else path
        if value is None:
            return None
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            with Image.open(io.BytesIO(bytes(value))) as im:
                return im.convert("RGB")
        if isinstance(value, str) or hasattr(value, "__fspath__"):
            with Image.open(value) as im:
                return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    raise TypeError(
        f"cannot read an image from a {type(value).__name__}: the image column or member must "
        "hold images, encoded image bytes or file paths"
    )
