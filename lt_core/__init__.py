"""lt_core: the iterative pruning engine (pure PyTorch; no Ray, MLflow or Optuna).

Importing the package loads nothing heavy: ``lt_core.config``, ``lt_core.imp`` and the rest are
imported where they are used (the command line answers ``--help`` without torch).
"""
