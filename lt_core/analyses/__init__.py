"""Analyses run on a trained network at a level, beside it (``imp.analyses``). Adding one is a
file in this package and a line in ``ANALYSES``; its name is then a valid entry of
``imp.analyses``."""

from __future__ import annotations

from lt_core.analyses.base import Analysis, AnalysisInputs
from lt_core.analyses.instability import Instability

ANALYSES: dict[str, Analysis] = {
    "instability": Instability(),
}

__all__ = ["ANALYSES", "Analysis", "AnalysisInputs"]
