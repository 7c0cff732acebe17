"""The concept browser: a static site to browse every concept of an SAE (`browse`).

Per concept: its top images with its heatmap over each, its activation histogram, frequency,
max / mean activation, how often it fires on CLS, register and patch tokens, its nearest
concepts by decoder cosine, text labels for CLIP-like models, and for archetypal SAEs the
candidate points that make its atom. Per image: its top concepts with their heatmaps. A list of
all concepts, sortable and filterable, searchable by id or label text.

``probe-sae browse SAE_DIR --images SPEC --out DIR [--serve]`` does the same from the shell.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe_sae.browser.build import BrowseSite, build_site
from probe_sae.browser.labels import PROMPT, VOCABULARY, read_vocabulary
from probe_sae.browser.neighbours import nearest_concepts
from probe_sae.browser.serve import serve, url_of

if TYPE_CHECKING:
    from probe_sae.browser.build import SAEs
    from probe_sae.data.images import Images

__all__ = [
    "PROMPT",
    "VOCABULARY",
    "BrowseSite",
    "browse",
    "build_site",
    "nearest_concepts",
    "read_vocabulary",
    "serve",
]


def _in_jupyter() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def browse(
    saes: SAEs,
    images: Images,
    out: str | Path = "probe_sae_out/browse",
    *,
    serve: bool | None = None,
    port: int = 0,
    vocabulary: Sequence[str] | str | Path | None = None,
    **options: Any,
) -> BrowseSite:
    """Build the concept browser of ``saes`` over ``images`` in ``out`` (see `build_site`).

    In Jupyter the returned `BrowseSite` displays the browser inline: by default (``serve=None``)
    it is then served on 127.0.0.1 from a background thread and shown in an iframe. Elsewhere
    it is not served unless ``serve=True`` (a background thread as well); open ``site.index``
    from the file system, which works as well.

    Args:
        saes: one SAE, a dict name → SAE (or folder), an SAE folder or a list of folders.
        images: a (N, C, H, W) tensor, an image folder, a Dataset or PIL images.
        out: the site's folder.
        serve: serve it on ``http://127.0.0.1:PORT/`` (default: only in Jupyter).
        port: the port (0: a free one).
        vocabulary: words for text labels (CLIP-like models), a list or a file; default
            `VOCABULARY`.
        options: passed to `build_site` (``model``, ``layer``, ``top_k``, ``max_images``...).
    """
    from probe_sae.browser.serve import serve as start

    site = build_site(saes, images, out, vocabulary=vocabulary, **options)
    if serve or (serve is None and _in_jupyter()):
        site.server = start(site.root, port, block=False)
        site.url = url_of(site.server)
    return site
