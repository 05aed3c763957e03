"""Retrain modes: how a pruned level retrains. Adding one is a file in this package and a line
in ``RETRAIN_MODES``; its name is then a valid ``imp.retrain``."""

from __future__ import annotations

from lt_core.retrain.base import RetrainMode
from lt_core.retrain.finetune import Finetune
from lt_core.retrain.lr_rewind import LrRewind
from lt_core.retrain.rewind import Rewind

RETRAIN_MODES: dict[str, RetrainMode] = {
    "rewind": Rewind(),
    "lr_rewind": LrRewind(),
    "finetune": Finetune(),
}

__all__ = ["RETRAIN_MODES", "RetrainMode"]
