"""Accuracy-vs-density figures in the style of Frankle & Carbin (2019), written as PNG files.

Densities are fractions of weights remaining (1.0 = dense) and accuracies fractions in [0, 1];
the axes show both in percent, with the percent of weights remaining on a log scale that
decreases to the right (100 -> 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

# (densities, mean accuracies, std of the accuracies or None)
Series = tuple[Sequence[float], Sequence[float], Sequence[float] | None]

_MAX_TICKS = 10
# y-axis label per accuracy metric (lt_core.metrics.ACCURACY_METRICS)
ACCURACY_LABELS = {"test_acc": "test accuracy, end of training (%)",
                   "early_stop_acc": "test accuracy at early stop (%)",
                   "best_test_acc": "best test accuracy (%)"}


def _percent(values: Sequence[float]) -> list[float]:
    return [100 * float(v) for v in values]


def _ticks(percents: list[float]) -> list[float]:
    """The data's densities as ticks (as Frankle & Carbin label theirs), thinned so that
    neighbouring labels neither overlap nor exceed about ten."""
    points = sorted(set([100.0] + percents), reverse=True)
    min_ratio = max(1.15, (points[0] / points[-1]) ** (1 / _MAX_TICKS))
    kept = [points[0]]
    for point in points[1:]:
        if kept[-1] / point >= min_ratio:
            kept.append(point)
    return kept


def _density_axis(ax: Axes, densities: Sequence[float], metric: str = "test_acc") -> None:
    """Log x axis of percent of weights remaining, from 100 down to the sparsest point."""
    percents = [p for p in _percent(densities) if p > 0]
    lowest = min([100.0] + percents)
    ax.set_xscale("log")
    ax.set_xlim(100 * 1.08, lowest / 1.08)  # inverted: sparser to the right
    ax.xaxis.set_major_locator(FixedLocator(_ticks(percents)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(ACCURACY_LABELS[metric])
    ax.grid(True, which="major", alpha=0.3)


def _draw(ax: Axes, series: Series, label: str, **style) -> None:
    """One line with markers and, when a std is given, a shaded band of ± one std."""
    densities, means, stds = series
    x, y = _percent(densities), _percent(means)
    (line,) = ax.plot(x, y, marker="o", markersize=3, label=label, **style)
    if stds is not None:
        spread = _percent(stds)
        ax.fill_between(x, [m - s for m, s in zip(y, spread)], [m + s for m, s in zip(y, spread)],
                        color=line.get_color(), alpha=0.2, linewidth=0)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_density(series: dict[str, Series], dense_acc: float, tolerance_pp: float,
                        title: str, path: Path, metric: str = "test_acc") -> Path:
    """Ticket and controls of one experiment (or configuration), with the dense accuracy and the
    tolerance band [dense - tolerance, dense]."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = 100 * dense_acc
    ax.axhspan(dense - tolerance_pp, dense, color="grey", alpha=0.15,
               label=f"tolerance ({tolerance_pp:g} pp)")
    ax.axhline(dense, color="black", linestyle=":", linewidth=1, label=f"dense ({dense:.2f}%)")
    for label, one in series.items():
        _draw(ax, one, label)
    _density_axis(ax, [d for densities, _, _ in series.values() for d in densities], metric)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def sweep_overlay(configs: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path,
                  title: str = "ticket accuracy by configuration",
                  metric: str = "test_acc") -> Path:
    """One ticket line (mean over seeds) per configuration of a sweep."""
    tickets = {label: {"ticket": (densities, means, None)}
               for label, (densities, means) in configs.items()}
    return configurations_with_controls(tickets, path, title, metric=metric)


def configurations_with_controls(configs: dict[str, dict[str, Series]], path: Path,
                                 title: str, dense: dict[str, float] | None = None,
                                 metric: str = "test_acc") -> Path:
    """Per configuration one colour: the ticket solid (± std band), each control dashed, and the
    configuration's dense accuracy (fraction) as a dotted line when given."""
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_densities: list[float] = []
    dashes = ["--", "-.", ":"]
    for index, (label, series) in enumerate(configs.items()):
        colour = colours[index % len(colours)]
        if dense and label in dense:
            ax.axhline(100 * dense[label], color=colour, linestyle=":", linewidth=1,
                       label=f"{label} [dense {100 * dense[label]:.2f}%]")
        if "ticket" in series:
            _draw(ax, series["ticket"], label, color=colour)
        controls = [name for name in series if name != "ticket"]
        for rank, name in enumerate(controls):
            _draw(ax, series[name], f"{label} [{name}]", color=colour,
                  linestyle=dashes[rank % len(dashes)], alpha=0.8)
        all_densities.extend(d for one in series.values() for d in one[0])
    _density_axis(ax, all_densities, metric)
    ax.set_title(title)
    ax.legend(fontsize="x-small")
    return _save(fig, path)
