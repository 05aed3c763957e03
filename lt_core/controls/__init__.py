"""Control experiments that tell a winning ticket from any sparse network of the same shape.
Adding one is a file in this package and a line in ``CONTROLS``; its name is then a valid entry
of ``imp.controls``."""

from __future__ import annotations

from lt_core.controls.base import Control, ControlInputs, ControlStart
from lt_core.controls.random_prune import random_prune
from lt_core.controls.reinit import reinit
from lt_core.controls.shuffle import shuffle

CONTROLS: dict[str, Control] = {
    "reinit": reinit,
    "random_prune": random_prune,
    "shuffle": shuffle,
}

__all__ = ["CONTROLS", "Control", "ControlInputs", "ControlStart"]
