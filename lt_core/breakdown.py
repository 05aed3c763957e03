"""Where a network's accuracy breaks down: the bracket, an estimate inside it, and its uncertainty.

This module is the one place the breakdown is computed. The trainable, the MLflow logger, the
report and the plots all use it.

**Rule** (``BreakdownRule``). A point is *within* when its accuracy under ``metric`` is at least
the dense network's accuracy, minus ``tolerance_pp`` percentage points. The dense accuracy is the
ticket's at level 0, under the same metric. A diverged network (its training loss became NaN/inf)
is below, whatever it measured: its accuracy counts as NaN (``LevelRecord.accuracy``).

**One network of one experiment** (``locate``). Walk its points from dense to sparse. A control's
walk starts from the same dense network.
- bracket: ``low`` is the last point within that has every denser point within; ``high`` is the
  first point below.
- estimate: where the accuracy crosses dense − tolerance, linear in log-density between ``low``
  and ``high``. When ``high`` has no finite accuracy, the estimate is the bracket's geometric
  middle.
- status:
  - ``broken``;
  - ``at first level``: the first pruned point is already below, so ``low`` is the dense network;
  - ``not reached``: no point fell below. This is censored: the breakdown is more than the
    deepest sparsity trained. ``low`` is that point, there is no ``high``, and the estimate is
    ``low``.
  - ``diverged``: the first point below is one where the network diverged: it diverged before
    it broke down (bracket and estimate as for ``broken``). ``divergence`` gives that point (or
    the dense network, when it diverged: then there is no breakdown at all); the report shows
    it instead of a breakdown.

**Over the seeds of a configuration** (``aggregate``). Report the estimates' mean and a 95%
Student-t interval. Both are computed on log-density and reported as sparsities: levels are
spaced geometrically, and seeds' breakdowns spread by factors, not by differences. With any
censored seed there is no mean, only a lower bound and no interval. The bound is the mean of
every seed's bracket low end: a censored seed's deepest point, a broken seed's last level within.

Controls trained only where they inform (``next_level_to_measure``): bisection over the grid
levels, then both neighbours of the bracket. Refinement (``refinement_plan``): K points inside a
broken network's grid bracket.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping

from lt_core.levels import SUBLEVELS, LevelRecord, networks_in
from lt_core.metrics import ACCURACY_METRICS, TICKET, metric_name

BROKEN, AT_FIRST_LEVEL, NOT_REACHED, DIVERGED = ("broken", "at first level", "not reached",
                                                 "diverged")
# Accuracies are ratios of counts: a point exactly at the threshold must not fail by rounding.
_EPSILON = 1e-9


@dataclass(frozen=True)
class BreakdownRule:
    """Which accuracy, and how far below the dense network's, counts as broken down."""

    tolerance_pp: float = 1.0  # percentage points below the dense accuracy
    metric: str = "test_acc"  # one of lt_core.metrics.ACCURACY_METRICS

    def __post_init__(self) -> None:
        if self.metric not in ACCURACY_METRICS:
            raise ValueError(f"metric {self.metric!r}: not one of {', '.join(ACCURACY_METRICS)}")

    def threshold(self, dense_acc: float) -> float:
        return dense_acc - self.tolerance_pp / 100

    def within(self, accuracy: float | None, threshold: float) -> bool:
        return (accuracy is not None and not math.isnan(accuracy)
                and accuracy >= threshold - _EPSILON)


@dataclass(frozen=True)
class Point:
    """One network at one level: where (position = level, e.g. 7.25) and what it measured."""

    position: float
    density: float
    accuracy: float  # NaN when diverged
    diverged: bool = False

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def on_grid(self) -> bool:
        return self.position == int(self.position)


def dense_accuracy(records: Iterable[LevelRecord], metric: str = "test_acc") -> float:
    """The ticket's accuracy at level 0 under ``metric``: every tolerance is measured from it."""
    for record in records:
        if record.level == 0 and record.sublevel == 0:
            value = record.value(TICKET, metric)
            if value is not None:
                return value
    raise ValueError("no level 0 (dense network) among the levels")


def curve(records: Iterable[LevelRecord], network: str, metric: str) -> list[Point]:
    """The network's points from dense to sparse, starting at the dense network (level 0)."""
    points = []
    for record in records:
        dense = record.level == 0 and record.sublevel == 0
        trained = TICKET if dense else network
        accuracy = record.accuracy(trained, metric)
        if accuracy is not None:
            points.append(Point(record.position, record.density, accuracy,
                                record.diverged(trained)))
    return sorted(points, key=lambda p: (-p.density, p.position))


@dataclass(frozen=True)
class Breakdown:
    """One network's breakdown in one experiment."""

    network: str
    status: str  # BROKEN, AT_FIRST_LEVEL, NOT_REACHED or DIVERGED
    threshold: float  # accuracy (fraction): dense - tolerance
    low: Point  # last point within (with every denser point within)
    high: Point | None  # first point below; None when not reached
    density_est: float  # where the accuracy crosses the threshold (low's density if censored)
    points: tuple[Point, ...]  # the whole curve, dense first

    @property
    def censored(self) -> bool:
        return self.status == NOT_REACHED

    @property
    def diverged(self) -> bool:
        return self.status == DIVERGED

    @property
    def sparsity_low(self) -> float:
        return self.low.sparsity

    @property
    def sparsity_high(self) -> float | None:
        return None if self.high is None else self.high.sparsity

    @property
    def sparsity_est(self) -> float:
        return 1.0 - self.density_est

    def values(self) -> dict[str, float]:
        """By the names of ``lt_core.metrics.BREAKDOWN_KEYS`` (no ``_high`` when censored);
        ``breakdown_sparsity`` is the bracket's low end, as it always was."""
        values = {"breakdown_sparsity": self.sparsity_low,
                  "breakdown_sparsity_low": self.sparsity_low,
                  "breakdown_sparsity_est": self.sparsity_est,
                  "breakdown_censored": float(self.censored),
                  "breakdown_diverged": float(self.diverged)}
        if self.high is not None:
            values["breakdown_sparsity_high"] = self.high.sparsity
        return values


def locate(records: Iterable[LevelRecord], network: str, rule: BreakdownRule) -> Breakdown | None:
    """The network's bracket, estimate and status; None when it has no pruned point yet, or when
    the dense network has no finite accuracy to measure from (it diverged)."""
    records = list(records)
    dense = dense_accuracy(records, rule.metric)
    points = curve(records, network, rule.metric)
    if len(points) < 2 or not math.isfinite(dense) or points[0].diverged:
        return None
    threshold = rule.threshold(dense)
    low = points[0]
    for point in points[1:]:
        if not rule.within(point.accuracy, threshold):
            status = (DIVERGED if point.diverged else AT_FIRST_LEVEL if low.position == 0
                      else BROKEN)
            return Breakdown(network, status, threshold, low, point,
                             crossing_density(low, point, threshold), tuple(points))
        low = point
    return Breakdown(network, NOT_REACHED, threshold, low, None, low.density, tuple(points))


def divergence(records: Iterable[LevelRecord], network: str,
               rule: BreakdownRule) -> Point | None:
    """The point where the network diverged before it broke down: the dense network's when it
    diverged (the ticket's, or a control's that has pruned points), else the first point below
    tolerance when it diverged there; None when it broke down first, or neither yet."""
    records = list(records)
    points = curve(records, network, rule.metric)
    if not points or (network != TICKET and len(points) < 2):
        return None
    if points[0].diverged:
        return points[0]
    found = locate(records, network, rule)
    return found.high if found is not None and found.diverged else None


def crossing_density(low: Point, high: Point, threshold: float) -> float:
    """Where the straight line between two points in (log-density, accuracy) crosses the
    threshold; the geometric middle of the two when high's accuracy is not finite. A point with
    no weights left (density 0) has no log: the line is then taken in density itself."""
    finite = math.isfinite(high.accuracy) and low.accuracy > high.accuracy
    fraction = (min(max((low.accuracy - threshold) / (low.accuracy - high.accuracy), 0.0), 1.0)
                if finite else 0.5)
    if high.density <= 0:
        return low.density * (1 - fraction)
    log_low, log_high = math.log(low.density), math.log(high.density)
    return math.exp(log_low + fraction * (log_high - log_low))


def trial_summary(records: Iterable[LevelRecord], rule: BreakdownRule) -> dict[str, float]:
    """One experiment's dense accuracy and every measured network's breakdown, by flat name
    (``breakdown_sparsity_est``, ``reinit_breakdown_sparsity_est``, ...)."""
    records = list(records)
    summary = {"dense_test_acc": dense_accuracy(records, "test_acc")}
    for network in networks_in(records):
        found = locate(records, network, rule)
        if found is not None:
            summary.update({metric_name(key, network): value
                            for key, value in found.values().items()})
    return summary


def levels_below(records: Iterable[LevelRecord], rule: BreakdownRule) -> int:
    """Number of consecutive most recent grid levels whose ticket is below tolerance."""
    records = [r for r in records if r.sublevel == 0]
    threshold = rule.threshold(dense_accuracy(records, rule.metric))
    count = 0
    for record in sorted((r for r in records if r.level >= 1), key=lambda r: -r.level):
        if rule.within(record.accuracy(TICKET, rule.metric), threshold):
            break
        count += 1
    return count


# ---- over seeds ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedAggregate:
    """One network's breakdown over the seeds of a configuration (sparsities as fractions)."""

    network: str
    n: int  # seeds with a breakdown
    censored: int  # seeds that never fell below
    sparsity_low: float  # geometric mean of the seeds' bracket ends, as sparsity
    sparsity_high: float | None  # None when any seed is censored
    sparsity_est: float  # mean estimate; with censored seeds the lower bound (= sparsity_low)
    ci: tuple[float, float] | None  # t-interval of the mean (sparsity); None if censored or n < 2
    confidence: float = 0.95

    @property
    def lower_bound(self) -> bool:
        return self.censored > 0


def _geometric_mean(values: list[float]) -> float:
    if min(values) <= 0:
        return 0.0
    return math.exp(statistics.fmean(math.log(v) for v in values))


def aggregate(breakdowns: Iterable[Breakdown | None], confidence: float = 0.95) -> SeedAggregate | None:
    """Mean (on log-density) of the seeds' estimates with its Student-t confidence interval.

    With any censored seed there is no mean, only a lower bound: every seed's breakdown is at
    least its bracket's low end (a censored seed's deepest point, a broken seed's last level
    within), so the mean breakdown is at least theirs. An estimate can overshoot; a low end
    cannot."""
    found = [b for b in breakdowns if b is not None]
    if not found:
        return None
    censored = sum(b.censored for b in found)
    low = 1.0 - _geometric_mean([b.low.density for b in found])
    if censored:
        return SeedAggregate(found[0].network, len(found), censored, low, None, low, None,
                             confidence)
    estimate = 1.0 - _geometric_mean([b.density_est for b in found])
    ci = None
    if len(found) >= 2 and min(b.density_est for b in found) > 0:
        logs = [math.log(b.density_est) for b in found]
        mean = statistics.fmean(logs)
        half = (student_t_quantile((1 + confidence) / 2, len(found) - 1)
                * statistics.stdev(logs) / math.sqrt(len(found)))
        ci = (1.0 - min(1.0, math.exp(mean + half)), 1.0 - math.exp(mean - half))
    high = 1.0 - _geometric_mean([b.high.density for b in found])
    return SeedAggregate(found[0].network, len(found), censored, low, high, estimate, ci,
                         confidence)


def student_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t distribution with ``df`` degrees of freedom (bisection on
    the exact CDF)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"student_t_quantile needs 0 < p < 1 and df > 0 (got {p}, {df})")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def student_t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _regularized_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), on the side where it converges."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300

    def guard(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / guard(1.0 + numerator * d)
            c = guard(1.0 + numerator / c)
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


# ---- controls where they inform --------------------------------------------------------------
def next_level_to_measure(known: Mapping[int, bool], deepest: int) -> int | None:
    """The next grid level (1..deepest) at which to measure a control, or None when its bracket
    is located and confirmed. ``known``: level -> within tolerance, for the levels measured.

    Bisection between the last level known within (with every denser known level within; the
    dense network is) and the first known below (or beyond the deepest level), assuming the
    control's accuracy falls with density; then both neighbours of the bracket. A neighbour that
    contradicts the assumption moves the bisection, so the bracket found is always the one the
    rule gives on the measured levels.
    """
    below = sorted(level for level, within in known.items() if not within)
    high = below[0] if below else deepest + 1
    low = max((level for level, within in known.items() if within and level < high), default=0)
    if high - low > 1:
        return (low + high) // 2
    for neighbour in (low - 1, high + 1):
        if 1 <= neighbour <= deepest and neighbour not in known:
            return neighbour
    return None


def _open_bracket(known: Mapping[int, bool], deepest: int) -> int:
    """The first level known below (or one past the deepest): the bisection's upper end, which
    only ever moves denser."""
    return min((level for level, within in known.items() if not within), default=deepest + 1)


def levels_still_asked(known: Mapping[int, bool], deepest: int) -> set[int]:
    """Every grid level that ``next_level_to_measure`` may still ask for, whatever the answers:
    the unmeasured levels up to one past its current upper end."""
    reach = min(_open_bracket(known, deepest) + 1, deepest)
    return {level for level in range(1, reach + 1) if level not in known}


def bracket_candidates(known: Mapping[int, bool], deepest: int) -> set[int]:
    """While a bisection is open, every grid level that may still end up as the dense end of
    its bracket (0: the dense network); none once it is done (the bracket is then known)."""
    if next_level_to_measure(known, deepest) is None:
        return set()
    return set(range(0, min(_open_bracket(known, deepest), deepest + 1)))


# ---- refinement near the break ---------------------------------------------------------------
def refinement_sublevels(steps: int) -> list[int]:
    """K points evenly spaced in level (so in log-density) strictly inside one level step."""
    return sorted({round(SUBLEVELS * j / (steps + 1)) for j in range(1, steps + 1)} - {0, SUBLEVELS})


@dataclass(frozen=True)
class RefineTask:
    level: int  # branch from this grid level (the last within)...
    sublevel: int  # ...pruned this many thousandths of a level further
    networks: tuple[str, ...]  # the networks whose bracket this point is in and that lack it


def grid_breakdown(records: Iterable[LevelRecord], network: str,
                   rule: BreakdownRule) -> Breakdown | None:
    """The breakdown on the grid levels alone: the bracket refinement refines."""
    return locate([r for r in records if r.sublevel == 0], network, rule)


def refinement_plan(records: list[LevelRecord], networks: Iterable[str], rule: BreakdownRule,
                    steps: int) -> list[RefineTask]:
    """The refinement points still to train: for every listed network that broke down between
    grid levels a and a+1, ``steps`` points between them (those it has are left out)."""
    wanted: dict[tuple[int, int], list[str]] = {}
    have = {(r.level, r.sublevel, n) for r in records for n in r.networks}
    for network in networks:
        found = grid_breakdown(records, network, rule)
        if found is None or found.censored:
            continue
        level = int(found.low.position)
        if int(found.high.position) != level + 1:
            continue  # a gap in the measured grid levels: measure the levels first
        for sublevel in refinement_sublevels(steps):
            if (level, sublevel, network) not in have:
                wanted.setdefault((level, sublevel), []).append(network)
    return [RefineTask(level, sublevel, tuple(nets))
            for (level, sublevel), nets in sorted(wanted.items())]
