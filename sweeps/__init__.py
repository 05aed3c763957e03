"""sweeps: IMP experiments as Ray Tune trials, Optuna search, MLflow records, breakdown reports."""
