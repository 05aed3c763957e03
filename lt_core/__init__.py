"""lt_core: the Iterative Magnitude Pruning engine (pure PyTorch; no Ray, MLflow or Optuna)."""

from lt_core.config import ConfigError, ExperimentConfig, load_config
from lt_core.imp import ImpRun

__all__ = ["ConfigError", "ExperimentConfig", "ImpRun", "load_config"]
