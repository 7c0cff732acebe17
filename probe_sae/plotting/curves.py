"""Training curves (from a metrics log) and FVU-vs-L0 fronts across SAEs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from probe_sae.constants import TRAINING_LOG
from probe_sae.metrics.evaluate import EvalReport
from probe_sae.plotting._display import new_figure

#: keys drawn by default, as logged by the trainer (``Trainer._log``)
CURVE_KEYS = ("fvu", "l0", "dead_fraction", "loss", "lr")
_LOG_SCALE = {"fvu", "loss", "mse"}

#: one SAE's point: an `EvalReport`, or a dict with ``"fvu"``, ``"l0"`` (and ``"family"``)
Report = EvalReport | Mapping[str, Any]


def load_metrics(metrics: Sequence[Mapping[str, Any]] | str | Path) -> list[dict[str, Any]]:
    """Metrics rows from a list (``TrainResult.metrics``) or a ``training_log.json`` / SAE folder."""
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        if path.is_dir():
            path = path / TRAINING_LOG
        if not path.is_file():
            raise FileNotFoundError(
                f"no training log at {path}; TrainResult.save(out_dir) writes one per SAE."
            )
        metrics = json.loads(path.read_text())
    rows = [dict(r) for r in metrics]
    if not rows:
        raise ValueError(
            "the metrics log is empty: train with log_every smaller than the run length."
        )
    return rows


def plot_training_curves(
    metrics: Sequence[Mapping[str, Any]] | str | Path,
    keys: Sequence[str] = CURVE_KEYS,
    *,
    x: str = "tokens",
    columns: int = 3,
) -> Figure:
    """Training curves, one axes per logged quantity, one line per SAE run (the rows' ``name``).

    Args:
        metrics: the trainer's rows (``TrainResult.metrics``; keys ``step``, ``tokens``,
            ``name``, ``layer``, ``lr``, ``fvu``, ``l0``, ``loss``, loss terms,
            ``dead_fraction``, ``dense_fraction``, ...) or a ``training_log.json`` path or the
            SAE folder holding it.
        keys: quantities to draw; keys absent from every row are skipped.
        x: the horizontal axis, ``"tokens"`` or ``"step"``.

    Returns:
        A ``Figure``; each axes is titled by its key and holds one ``Line2D`` per run, labelled
        with the run name, whose data are exactly the logged values.
    """
    rows = load_metrics(metrics)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        raise ValueError(
            f"none of {list(keys)} is in the log; it has {sorted(set().union(*rows))}."
        )
    names = list(dict.fromkeys(str(r.get("name", "sae")) for r in rows))
    columns = max(1, min(columns, len(present)))
    n_rows = math.ceil(len(present) / columns)
    fig = new_figure(3.0 * columns, 2.3 * n_rows)
    axes = fig.subplots(n_rows, columns, squeeze=False)
    for pos in range(n_rows * columns):
        ax = axes[pos // columns, pos % columns]
        if pos >= len(present):
            ax.set_axis_off()
            continue
        key = present[pos]
        for name in names:
            run = [r for r in rows if str(r.get("name", "sae")) == name and key in r]
            ax.plot(
                [r[x] for r in run], [r[key] for r in run], marker=".", markersize=3, label=name
            )
        if key in _LOG_SCALE and _wide([r[key] for r in rows if key in r]):
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if len(names) > 1:
        axes[0, 0].legend(fontsize=7)
    return fig


def _wide(values: Sequence[float]) -> bool:
    """Positive values spanning more than a factor 3 (worth a log scale)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 3


def _point(report: Report) -> tuple[float, float, str]:
    get = report.get if isinstance(report, Mapping) else lambda k, d=None: getattr(report, k, d)
    fvu, l0 = get("fvu"), get("l0")
    if fvu is None or l0 is None:
        raise ValueError(
            "each report needs fvu and l0 (an EvalReport from probe_sae.metrics.evaluate or a dict)."
        )
    return float(l0), float(fvu), str(get("family", "") or "")


def plot_fvu_l0(
    reports: Mapping[str, Report] | Sequence[Report],
    *,
    log_fvu: bool = True,
    connect: bool = True,
) -> Figure:
    """FVU against L0 for several SAEs (lower-left is better), one point per SAE.

    Args:
        reports: ``{name: EvalReport or dict with "fvu" and "l0"}`` or a list of them
            (named by their ``family``).
        connect: join points of the same family, ordered by L0 (a sparsity–fidelity front).

    Returns:
        A ``Figure`` with one labelled point per SAE (``ax.texts`` hold the names).
    """
    items = list(reports.items()) if isinstance(reports, Mapping) else [(None, r) for r in reports]
    if not items:
        raise ValueError("give at least one report.")
    points = []
    for name, rep in items:
        l0, fvu, family = _point(rep)
        points.append((name or family or f"sae {len(points)}", family or name or "", l0, fvu))
    fig = new_figure(4.2, 3.2)
    ax = fig.add_subplot()
    families = list(dict.fromkeys(p[1] for p in points))
    for fam in families:
        pts = sorted((p for p in points if p[1] == fam), key=lambda p: p[2])
        style = "-o" if connect and len(pts) > 1 else "o"
        ax.plot([p[2] for p in pts], [p[3] for p in pts], style, label=fam or None, markersize=5)
    for name, _, l0, fvu in points:
        ax.annotate(name, (l0, fvu), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if log_fvu and _wide([p[3] for p in points]):
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", useOffset=False)
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.set_xlabel("L0 (active concepts per token)")
    ax.set_ylabel("FVU")
    ax.grid(alpha=0.3)
    if any(families):
        ax.legend(fontsize=7)
    return fig
