"""lr_rewind: keep the pruned final weights, replay the LR schedule from k (Renda et al. 2020)."""

from __future__ import annotations

from lt_core.retrain.base import RetrainMode


class LrRewind(RetrainMode):
    rewinds_weights = False
