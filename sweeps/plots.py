"""Accuracy-vs-density figures in the style of Frankle & Carbin (2019), written as PNG files.

Densities are fractions of weights remaining (1.0 = dense) and accuracies fractions in [0, 1];
the axes show both in percent, with the percent of weights remaining on a log scale that
decreases to the right (100 -> 1).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

# (densities, mean accuracies, std of the accuracies or None)
Series = tuple[Sequence[float], Sequence[float], Sequence[float] | None]
_ARROW = 1.6  # a censored curve's arrow points this factor sparser than its last point


@dataclass(frozen=True)
class Mark:
    """Where one curve breaks down (fractions): the estimate on the threshold line (dense -
    tolerance) with the bracket around it, or, when the curve never fell below (censored), its
    last point drawn open with an arrow towards sparser."""

    threshold: float  # accuracy of the threshold line
    density_est: float
    density_low: float  # the bracket's dense end: the last point within
    density_high: float | None  # its sparse end: the first point below; None when censored
    end_accuracy: float | None = None  # accuracy at density_low (where a censored arrow starts)
    interval: tuple[float, float] | None = None  # confidence interval of the estimate (densities)

    @property
    def censored(self) -> bool:
        return self.density_high is None

    def densities(self) -> list[float]:
        """The densities the axis must show for this mark (an interval wider than the data is
        cut at the axis' edge rather than squeezing the curves)."""
        if self.censored:
            return [self.density_low, self.density_low / _ARROW]
        return [self.density_low, self.density_high]

_MAX_TICKS = 10
# y-axis label per accuracy metric (lt_core.metrics.ACCURACY_METRICS)
ACCURACY_LABELS = {"test_acc": "test accuracy, end of training (%)",
                   "early_stop_acc": "test accuracy at early stop (%)",
                   "best_test_acc": "best test accuracy (%)"}


def _percent(values: Sequence[float]) -> list[float]:
    return [100 * float(v) for v in values]


def _ticks(percents: list[float], most: int = _MAX_TICKS) -> list[float]:
    """The data's densities as ticks (as Frankle & Carbin label theirs), thinned so that
    neighbouring labels neither overlap nor exceed about ``most``."""
    points = sorted(set([100.0] + percents), reverse=True)
    min_ratio = max(1.15, (points[0] / points[-1]) ** (1 / most))
    kept = [points[0]]
    for point in points[1:]:
        if kept[-1] / point >= min_ratio:
            kept.append(point)
    return kept


def _density_axis(ax: Axes, densities: Sequence[float], metric: str = "test_acc",
                  extent: Sequence[float] = (), most_ticks: int = _MAX_TICKS) -> None:
    """Log x axis of percent of weights remaining, from 100 down to the sparsest point; ticks at
    the data's densities, ``extent`` only widens the range (marks drawn beyond the data)."""
    percents = [p for p in _percent(densities) if p > 0]
    lowest = min([100.0] + percents + [p for p in _percent(extent) if p > 0])
    ax.set_xscale("log")
    ax.set_xlim(100 * 1.08, lowest / 1.08)  # inverted: sparser to the right
    ax.xaxis.set_major_locator(FixedLocator(_ticks(percents, most_ticks)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(ACCURACY_LABELS[metric])
    ax.grid(True, which="major", alpha=0.3)


def _draw(ax: Axes, series: Series, label: str, y_percent: bool = True, **style) -> Line2D:
    """One line with markers and, when a std is given, a shaded band of ± one std; y values
    are fractions shown in percent (``y_percent``) or drawn as they are (percentage points)."""
    densities, means, stds = series
    scale = _percent if y_percent else list
    x, y = _percent(densities), scale(means)
    (line,) = ax.plot(x, y, marker="o", markersize=3, label=label, **style)
    if stds is not None:
        spread = scale(stds)
        ax.fill_between(x, [m - s for m, s in zip(y, spread)], [m + s for m, s in zip(y, spread)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def _mark(ax: Axes, mark: Mark, colour: str) -> None:
    if mark.censored:
        x, y = 100 * mark.density_low, 100 * (mark.end_accuracy or mark.threshold)
        ax.plot([x], [y], marker="o", markersize=8, markerfacecolor="white",
                markeredgecolor=colour, markeredgewidth=1.5, zorder=5)
        ax.annotate("", xy=(x / _ARROW, y), xytext=(x, y), zorder=5,
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.5})
        return
    y = 100 * mark.threshold
    ax.plot([100 * mark.density_low, 100 * mark.density_high], [y, y], color=colour,
            linewidth=6, alpha=0.35, solid_capstyle="butt", zorder=4)
    x = 100 * mark.density_est
    if mark.interval is not None:
        sparse, dense = sorted(100 * d for d in mark.interval)
        ax.errorbar([x], [y], xerr=[[max(x - sparse, 0)], [max(dense - x, 0)]], fmt="none",
                    ecolor=colour, elinewidth=1, capsize=4, zorder=5)
    ax.plot([x], [y], marker="D", markersize=6, color=colour, markeredgecolor="black",
            markeredgewidth=0.6, zorder=6)


def _mark_legend(ax: Axes, marks: list[Mark], **legend) -> None:
    """The curves' legend plus one entry per kind of mark drawn."""
    handles, labels = ax.get_legend_handles_labels()
    if any(not m.censored for m in marks):
        handles.append(Line2D([], [], color="grey", marker="D", markeredgecolor="black",
                              linewidth=6, alpha=0.6))
        labels.append("breakdown estimate (bar: bracket" +
                      (", caps: 95% CI)" if any(m.interval for m in marks) else ")"))
    if any(m.censored for m in marks):
        handles.append(Line2D([], [], color="grey", marker="o", markerfacecolor="white",
                              linestyle="none"))
        labels.append("not reached (→: breakdown sparser than shown)")
    ax.legend(handles, labels, **legend)


def _save(fig, path: Path, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_density(series: dict[str, Series], dense_acc: float, tolerance_pp: float,
                        title: str, path: Path, metric: str = "test_acc",
                        marks: dict[str, Mark] | None = None) -> Path:
    """Ticket and controls of one experiment (or configuration), with the dense accuracy, the
    tolerance band [dense - tolerance, dense] and each curve's breakdown mark."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = 100 * dense_acc
    ax.axhspan(dense - tolerance_pp, dense, color="grey", alpha=0.15,
               label=f"tolerance ({tolerance_pp:g} pp)")
    ax.axhline(dense, color="black", linestyle=":", linewidth=1, label=f"dense ({dense:.2f}%)")
    marks = marks or {}
    for label, one in series.items():
        line = _draw(ax, one, label)
        if label in marks:
            _mark(ax, marks[label], line.get_color())
    _density_axis(ax, [d for densities, _, _ in series.values() for d in densities], metric,
                  [d for m in marks.values() for d in m.densities()])
    ax.set_title(title)
    _mark_legend(ax, list(marks.values()), fontsize="small")
    return _save(fig, path)


def sweep_overlay(configs: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path,
                  title: str = "ticket accuracy by configuration",
                  metric: str = "test_acc", marks: dict[str, Mark] | None = None) -> Path:
    """One ticket line (mean over seeds) per configuration of a sweep, with its breakdown mark."""
    tickets = {label: {"ticket": (densities, means, None)}
               for label, (densities, means) in configs.items()}
    ticket_marks = {label: {"ticket": mark} for label, mark in (marks or {}).items()}
    return configurations_with_controls(tickets, path, title, metric=metric, marks=ticket_marks)


def configurations_with_controls(configs: dict[str, dict[str, Series]], path: Path,
                                 title: str, dense: dict[str, float] | None = None,
                                 metric: str = "test_acc",
                                 marks: dict[str, dict[str, Mark]] | None = None) -> Path:
    """Per configuration one colour: the ticket solid (± std band), each control dashed, the
    configuration's dense accuracy (fraction) as a dotted line when given, and each curve's
    breakdown mark (``marks[configuration][network]``)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_densities: list[float] = []
    dashes = ["--", "-.", ":"]
    marks = marks or {}
    drawn: list[Mark] = []
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
        for name, mark in marks.get(label, {}).items():
            if name in series:
                _mark(ax, mark, colour)
                drawn.append(mark)
        all_densities.extend(d for one in series.values() for d in one[0])
    _density_axis(ax, all_densities, metric, [d for m in drawn for d in m.densities()])
    ax.set_title(title)
    _mark_legend(ax, drawn, fontsize="x-small")
    return _save(fig, path)


def _short_title(label: str, width: int = 42) -> str:
    """A configuration label for a small panel: ``pruning.criterion=snip, pruning.mode=at_init``
    becomes ``criterion=snip, mode=at_init``, wrapped."""
    parts = [part.strip() for part in label.split(",")]
    short = ", ".join(part.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + part.split("=", 1)[1]
                      if "=" in part else part for part in parts)
    return textwrap.fill(short, width)


def configuration_panels(configs: dict[str, dict[str, Series]], dense: dict[str, float],
                         tolerance_pp: float, path: Path, title: str,
                         metric: str = "test_acc",
                         marks: dict[str, dict[str, Mark]] | None = None,
                         columns: int = 4) -> Path:
    """One panel per configuration: its ticket and controls (mean ± std over seeds), the dense
    accuracy with its tolerance band, and each curve's breakdown mark; shared axes."""
    labels = list(configs)
    rows = max(1, math.ceil(len(labels) / columns))
    columns = min(columns, max(1, len(labels)))
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), sharex=True,
                             squeeze=False)
    marks = marks or {}
    every = [d for series in configs.values() for one in series.values() for d in one[0]]
    extent = [d for config in marks.values() for m in config.values() for d in m.densities()]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    networks = list(dict.fromkeys(name for series in configs.values() for name in series))
    for index, ax in enumerate(axes.flat):
        if index >= len(labels):
            ax.set_visible(False)
            continue
        label = labels[index]
        level = 100 * dense[label]
        ax.axhspan(level - tolerance_pp, level, color="grey", alpha=0.15)
        ax.axhline(level, color="black", linestyle=":", linewidth=1)
        for name, one in configs[label].items():
            colour = colours[networks.index(name) % len(colours)]
            _draw(ax, one, name, color=colour, linestyle="-" if name == "ticket" else "--")
            if name in marks.get(label, {}):
                _mark(ax, marks[label][name], colour)
        _density_axis(ax, every, metric, extent, most_ticks=5)
        ax.set_title(_short_title(label), fontsize="small")
        if index % columns:
            ax.set_ylabel("")
        if index < len(labels) - columns:
            ax.set_xlabel("")
    handles = [Line2D([], [], color=colours[i % len(colours)], marker="o", markersize=3,
                      linestyle="-" if name == "ticket" else "--")
               for i, name in enumerate(networks)]
    fig.legend(handles, networks, loc="lower center", ncol=len(networks), fontsize="small",
               frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 / rows, 1, 1))
    return _save(fig, path, tight=False)


def instability_panels(accuracy: dict[str, dict[str, Series]],
                       barriers: dict[str, dict[str, Series]], threshold_pp: float, path: Path,
                       title: str, metric: str = "test_acc",
                       onsets: dict[str, dict[str, float]] | None = None) -> Path:
    """Per configuration (a column), accuracy (top) and the instability analysis's error barrier
    (bottom) against density, for every analysed network; the threshold as a line and, where a
    network became unstable, its first unstable density as a vertical line in both panels."""
    labels = list(barriers)
    fig, axes = plt.subplots(2, max(1, len(labels)), figsize=(3.8 * max(1, len(labels)), 5.6),
                             sharex=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    networks = list(dict.fromkeys(n for series in barriers.values() for n in series))
    every = [d for series in (*accuracy.values(), *barriers.values())
             for one in series.values() for d in one[0]]
    onsets = onsets or {}
    for column, label in enumerate(labels):
        top, bottom = axes[0][column], axes[1][column]
        for name in networks:
            colour = colours[networks.index(name) % len(colours)]
            style = {"color": colour, "linestyle": "-" if name == "ticket" else "--"}
            if name in accuracy.get(label, {}):
                _draw(top, accuracy[label][name], name, **style)
            if name in barriers[label]:  # in percentage points already
                _draw(bottom, barriers[label][name], name, y_percent=False, **style)
            if name in onsets.get(label, {}):
                for ax in (top, bottom):
                    ax.axvline(100 * onsets[label][name], color=colour, linestyle=":",
                               linewidth=1.2)
        bottom.axhline(threshold_pp, color="black", linestyle=":", linewidth=1)
        _density_axis(top, every, metric, most_ticks=5)
        _density_axis(bottom, every, metric, most_ticks=5)
        top.set_xlabel("")
        bottom.set_ylabel("error barrier (pp)" if column == 0 else "")
        top.set_ylabel(ACCURACY_LABELS[metric] if column == 0 else "")
        top.set_title(_short_title(label), fontsize="small")
    handles = [Line2D([], [], color=colours[i % len(colours)], marker="o", markersize=3,
                      linestyle="-" if name == "ticket" else "--") for i, name in enumerate(networks)]
    handles.append(Line2D([], [], color="black", linestyle=":"))
    fig.legend(handles, [*networks, f"threshold {threshold_pp:g} pp; dotted verticals: first "
                         f"unstable level"], loc="lower center", ncol=len(networks) + 1,
               fontsize="small", frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, path, tight=False)
