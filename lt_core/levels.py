"""One representation of a level: what every network trained at one density measured.

A ``LevelRecord`` is a grid level (``sublevel`` 0: level 0 is the dense network) or a refinement
point between two grid levels (``sublevel`` thousandths of a level past ``level``: level 7,
sublevel 250 is "level 7.25", pruned a quarter of the way from level 7 to level 8). The engine
writes it as ``metrics.json`` in the run directory; Tune results and MLflow runs carry it flat
(``lt_core.metrics.metric_name``); the breakdown, the report and the plots read it from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from lt_core.metrics import (DIVERGED, STATUS_DIVERGED, STATUS_KEY, TICKET, metric_name,
                             split_metric_name)

SUBLEVELS = 1000  # refinement points sit at level + sublevel / SUBLEVELS


@dataclass(frozen=True)
class LevelRecord:
    level: int
    density: float
    # network ("ticket" or a control) -> {key: value}; only the networks trained here
    networks: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    sublevel: int = 0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def position(self) -> float:
        """The level as a number: 7 for level 7, 7.25 for its refinement point at sublevel 250."""
        return self.level + self.sublevel / SUBLEVELS

    @property
    def refined(self) -> bool:
        return self.sublevel > 0

    @property
    def point_id(self) -> tuple[int, int]:
        return self.level, self.sublevel

    def value(self, network: str, key: str) -> float | None:
        found = self.networks.get(network, {}).get(key)
        return None if found is None else float(found)

    def diverged(self, network: str) -> bool:
        """The network's training loss became NaN/inf here: it stopped at once."""
        return bool(self.value(network, DIVERGED))

    def accuracy(self, network: str, metric: str) -> float | None:
        """The network's accuracy under ``metric`` as the breakdown sees it: NaN (below any
        tolerance) when it diverged, whatever it measured."""
        return math.nan if self.diverged(network) else self.value(network, metric)

    def flat(self) -> dict[str, float]:
        """``level``, ``sublevel``, ``density``, ``sparsity`` and every measurement by its flat
        name (``test_acc``, ``reinit_test_acc``, ...)."""
        values: dict[str, float] = {"level": self.level, "sublevel": self.sublevel,
                                    "density": self.density, "sparsity": self.sparsity}
        for network, measured in self.networks.items():
            for key, value in measured.items():
                values[metric_name(key, network)] = value
        return values

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "LevelRecord":
        """The inverse of ``flat``: names that are not a network's measurement are ignored."""
        networks: dict[str, dict[str, float]] = {}
        for name, value in values.items():
            split = split_metric_name(name)
            if split is not None and value is not None:
                networks.setdefault(split[0], {})[split[1]] = float(value)
        return cls(level=int(values["level"]), sublevel=int(values.get("sublevel", 0) or 0),
                   density=float(values["density"]), networks=networks)

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> "LevelRecord":
        """From a level's ``metrics.json``: the ticket's keys at the top (absent when only
        controls were trained at a refinement point), each control under ``controls``. A
        network's ``status`` becomes its ``diverged`` value (1.0 or 0.0; absent in older runs,
        which never diverged)."""
        networks: dict[str, dict[str, float]] = {}
        ticket = _measured(metrics)
        if ticket:
            networks[TICKET] = ticket
        for name, control in metrics.get("controls", {}).items():
            networks[name] = _measured(control)
        return cls(level=int(metrics["level"]), sublevel=int(metrics.get("sublevel", 0)),
                   density=float(metrics["density"]), networks=networks)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _measured(network: Mapping[str, Any]) -> dict[str, float]:
    """One network's measurements in a ``metrics.json`` (a null loss is left out)."""
    values = {k: float(v) for k, v in network.items()
              if split_metric_name(k) == (TICKET, k) and _number(v)}
    if STATUS_KEY in network:
        values[DIVERGED] = float(network[STATUS_KEY] == STATUS_DIVERGED)
    return values


def sort_records(records: list[LevelRecord]) -> list[LevelRecord]:
    """Densest first (level order; a refinement point between its two grid levels)."""
    return sorted(records, key=lambda r: (r.level, r.sublevel))


def networks_in(records: list[LevelRecord]) -> list[str]:
    """Every network measured in the records, the ticket first, controls in order of appearance."""
    seen: dict[str, None] = {TICKET: None}
    for record in records:
        seen.update(dict.fromkeys(record.networks))
    return list(seen)


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
