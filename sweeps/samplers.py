"""The Optuna samplers a study's ``search.sampler`` names, as Tune can save them.

Tune pickles the searcher, its Optuna sampler included, with the Tuner and in every snapshot of
the experiment's state (which ``lt-sweep resume`` restores). Optuna 5.1 gave the genetic samplers
(NSGA-II) a ``threading.Lock``, which does not pickle: here it is left out of the pickle and made
anew when the sampler is loaded."""

from __future__ import annotations

import threading

import optuna

LOCK = "_thread_lock"  # Optuna >= 5.1, optuna/samplers/_ga/_base.py


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if LOCK in state:
            state[LOCK] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if LOCK in state:
            setattr(self, LOCK, threading.Lock())


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler,
            "nsga2": NSGAIISampler}
