"""rewind: weights and LR schedule back to iteration k (k = 0: the original LTH)."""

from __future__ import annotations

from lt_core.retrain.base import RetrainMode


class Rewind(RetrainMode):
    pass
