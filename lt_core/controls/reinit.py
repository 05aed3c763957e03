"""reinit: the ticket's masks, a fresh random initialisation (Frankle & Carbin's control)."""

from __future__ import annotations

from lt_core.controls.base import ControlInputs, ControlStart


def reinit(inputs: ControlInputs) -> ControlStart:
    return ControlStart(inputs.fresh(), inputs.masks)
