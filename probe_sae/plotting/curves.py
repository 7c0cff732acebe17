"""Training curves (from a metrics log) and FVU-vs-L0 fronts across SAEs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from probe_sae.constants import TRAINING_LOG
from probe_sae.metrics.evaluate import EvalReport
from probe_sae.plotting._display import new_figure

#: keys drawn by default, as logged by the trainer (``Trainer._log``)
CURVE_KEYS = ("fvu", "l0", "dead_fraction", "loss", "lr")
_LOG_SCALE = {"fvu", "loss", "mse"}

#: a run's curve: (x values, y values)
Series = tuple[list[float], list[float]]
#: runs with at most this many logged points are drawn as markers, without lines
FEW_POINTS = 4

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


def curve_series(
    metrics: Sequence[Mapping[str, Any]] | str | Path,
    keys: Sequence[str] = CURVE_KEYS,
    *,
    x: str = "tokens",
) -> tuple[dict[str, dict[str, Series]], dict[str, dict[str, float]]]:
    """The training curves worth drawing, and the constant ones (to say in words).

    Returns:
        ``(varying, constant)``: ``varying[key][run] = (xs, ys)`` for each run whose logged
        ``key`` changes; ``constant[key][run] = value`` for runs where it never changes (a TopK
        SAE's L0, a dead fraction stuck at 0) or was logged once.
    """
    rows = load_metrics(metrics)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        raise ValueError(
            f"none of {list(keys)} is in the log; it has {sorted(set().union(*rows))}."
        )
    names = list(dict.fromkeys(str(r.get("name", "sae")) for r in rows))
    varying: dict[str, dict[str, Series]] = {}
    constant: dict[str, dict[str, float]] = {}
    for key in present:
        for name in names:
            run = [r for r in rows if str(r.get("name", "sae")) == name and key in r]
            if not run:
                continue
            ys = [float(r[key]) for r in run]
            if len(ys) < 2 or _is_constant(ys):
                constant.setdefault(key, {})[name] = ys[0]
            else:
                varying.setdefault(key, {})[name] = ([float(r[x]) for r in run], ys)
    return varying, constant


def plot_training_curves(
    metrics: Sequence[Mapping[str, Any]] | str | Path,
    keys: Sequence[str] = CURVE_KEYS,
    *,
    x: str = "tokens",
    columns: int = 3,
) -> Figure:
    """Training curves, one axes per logged quantity, one line per SAE run (the rows' ``name``).

    Only series that change are drawn (see `curve_series`): a run whose value is constant (a
    TopK SAE's L0) gets no line, and a quantity constant in every run gets no axes; the
    figure's ``constant`` attribute holds those values (``{key: {run: value}}``). With few
    logged points the values are drawn as markers (no line between 2 points pretends a trend).

    Args:
        metrics: the trainer's rows (``TrainResult.metrics``; keys ``step``, ``tokens``,
            ``name``, ``layer``, ``lr``, ``fvu``, ``l0``, ``loss``, loss terms,
            ``dead_fraction``, ``dense_fraction``, ...) or a ``training_log.json`` path or the
            SAE folder holding it.
        keys: quantities to draw; keys absent from every row are skipped.
        x: the horizontal axis, ``"tokens"`` or ``"step"``.

    Returns:
        A ``Figure``; each axes is titled by its key and holds one ``Line2D`` per varying run,
        labelled with the run name, whose data are exactly the logged values. When nothing
        varies the figure holds one axes saying so.
    """
    varying, constant = curve_series(metrics, keys, x=x)
    names = list(dict.fromkeys(n for runs in varying.values() for n in runs))
    columns = max(1, min(columns, len(varying)))
    n_rows = max(1, math.ceil(len(varying) / columns))
    fig = new_figure(3.0 * columns, 2.3 * n_rows)
    fig.constant = constant  # type: ignore[attr-defined]
    axes = fig.subplots(n_rows, columns, squeeze=False)
    keys_drawn = list(varying)
    for pos in range(n_rows * columns):
        ax = axes[pos // columns, pos % columns]
        if pos >= len(keys_drawn):
            ax.set_axis_off()
            if pos == 0:
                ax.text(0.5, 0.5, "no logged quantity changes", ha="center", va="center")
            continue
        _draw_key(ax, keys_drawn[pos], varying[keys_drawn[pos]], x)
    if len(names) > 1:
        axes[0, 0].legend(fontsize=7)
    return fig


def _draw_key(ax: Axes, key: str, runs: Mapping[str, Series], x: str) -> None:
    """One axes: the runs of ``key``, markers only when a run has few points."""
    for name, (xs, ys) in runs.items():
        few = len(xs) <= FEW_POINTS
        ax.plot(
            xs, ys, marker="o" if few else ".", markersize=5 if few else 3,
            linestyle="none" if few else "-", label=name,
        )  # fmt: skip
    values = [y for _, ys in runs.values() for y in ys]
    if key in _LOG_SCALE and _wide(values):
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", useOffset=False)
        pad_axis(ax, "y", values)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel(x, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _is_constant(values: Sequence[float], rel: float = 1e-6) -> bool:
    """Whether ``values`` are equal up to float noise."""
    lo, hi = min(values), max(values)
    return hi - lo <= rel * max(abs(lo), abs(hi), 1e-12)


def padded_limits(values: Sequence[float], rel: float = 0.05) -> tuple[float, float] | None:
    """Axis limits for ``values`` whose spread is under ``rel`` of their magnitude (a nearly
    constant series): centre ± ``rel`` · magnitude (± ``rel`` around 0); else ``None``."""
    if not values:
        return None
    lo, hi = min(values), max(values)
    centre = (lo + hi) / 2
    half = rel * abs(centre) if centre else rel
    if hi - lo >= 2 * half:
        return None
    return centre - half, centre + half


def pad_axis(ax: Axes, axis: str, values: Sequence[float]) -> None:
    """Widen ``ax``'s ``axis`` ("x" or "y") when ``values`` are nearly constant, so that
    float noise (L0 15.97 – 16.00) is not stretched over the whole axes."""
    limits = padded_limits(values)
    if limits is not None:
        (ax.set_xlim if axis == "x" else ax.set_ylim)(*limits)


def plotted_series(fig: Figure) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """What a figure draws: ``{axes title: {line label: (xs, ys)}}`` (for checks and tests)."""
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            xs = [float(v) for v in line.get_xdata()]
            ys = [float(v) for v in line.get_ydata()]
            out.setdefault(ax.get_title(), {})[str(line.get_label())] = (xs, ys)
    return out


def plot_steering(
    multiples: Sequence[float],
    target: Sequence[float],
    off_target: Sequence[float] | None = None,
    *,
    target_label: str = "P(target)",
    xlabel: str = "strength (multiples of the concept's typical code)",
    title: str | None = None,
) -> Figure:
    """Dose-response of a steering experiment: the target quantity (and the mean off-target
    change) against the strength added. Lines join the points (the strengths are ordered)."""
    if len(multiples) != len(target) or not multiples:
        raise ValueError("give one target value per strength (and at least one strength).")
    fig = new_figure(4.2, 3.0)
    ax = fig.add_subplot()
    ax.plot(multiples, target, "-o", label=target_label, markersize=5)
    if off_target is not None:
        ax.plot(multiples, off_target, "--s", label="mean |Δ| of other outputs", markersize=4)
    pad_axis(ax, "y", [*target, *(off_target or [])])
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("probability", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
        pad_axis(ax, "y", [p[3] for p in points])
    ax.ticklabel_format(axis="x", useOffset=False)
    pad_axis(ax, "x", [p[2] for p in points])
    ax.set_xlabel("L0 (active concepts per token)")
    ax.set_ylabel("FVU")
    ax.grid(alpha=0.3)
    if any(families):
        ax.legend(fontsize=7)
    return fig
