"""Serve a built concept browser over HTTP on 127.0.0.1 (the site also opens from ``file://``).

`serve` starts Python's ``http.server`` bound to the loopback address only, so nothing outside
the machine can reach it, in a background thread (``block=False``, what `probe_sae.browse` does in
Jupyter) or in the foreground until Ctrl-C (``probe-sae browse --serve``).
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

HOST = "127.0.0.1"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(
    folder: str | Path, port: int = 0, *, block: bool = True
) -> http.server.ThreadingHTTPServer:
    """Serve ``folder`` on ``http://127.0.0.1:PORT/`` (``port=0``: a free port).

    Args:
        folder: the site's folder (``BrowseSite.root``).
        port: the TCP port; 0 picks a free one (``server.server_address[1]`` tells which).
        block: serve until interrupted; ``False`` serves from a daemon thread and returns at once
            (stop it with ``server.shutdown()``).

    Returns:
        The server (once it has stopped, when ``block``).
    """
    root = Path(folder)
    if not (root / "index.html").is_file():
        raise FileNotFoundError(
            f"{root} holds no index.html: build the site first (probe-sae browse)."
        )
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((HOST, port), handler)
    if not block:
        threading.Thread(target=server.serve_forever, daemon=True, name="probe-sae-browse").start()
        return server
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return server


def url_of(server: http.server.ThreadingHTTPServer) -> str:
    """``http://127.0.0.1:PORT/`` of a running server."""
    return f"http://{HOST}:{server.server_address[1]}/"
