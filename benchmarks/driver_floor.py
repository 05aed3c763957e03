"""The CPU seconds any lt-sweep driver must spend, with no lt-sweep code run: the libraries a
sweep's driver cannot do without, and a new MLflow store, in one fresh process.

In order:
- import torch: the study's validation builds each model on the meta device;
- import Ray Tune: the driver runs the Tuner;
- import MLflow's client, and open a new SQLite store with it (MLflow creates the tables and runs
  its schema migrations), as a first sweep into `./mlflow.db` does;
- import matplotlib (Agg): the sweep's plots are drawn on the driver.

On a machine whose cores the trials fill, each of these CPU seconds is taken from the trials.

Run:  python benchmarks/driver_floor.py   (prints one JSON line: CPU seconds per step, and total)
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import tempfile
from pathlib import Path


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    steps, last = {}, cpu()  # the interpreter's own start is not counted

    def done(name: str) -> None:
        nonlocal last
        now = cpu()
        steps[name], last = now - last, now

    importlib.import_module("torch")
    done("import torch")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # as the driver has it
    importlib.import_module("ray.tune")
    done("import ray.tune")
    from mlflow import MlflowClient

    done("import mlflow")
    with tempfile.TemporaryDirectory() as temp:
        MlflowClient(tracking_uri=f"sqlite:///{Path(temp) / 'mlflow.db'}").search_experiments()
        done("new SQLite store")
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    importlib.import_module("matplotlib.pyplot")
    done("import matplotlib")
    print(json.dumps({**{k: round(v, 2) for k, v in steps.items()},
                      "total": round(sum(steps.values()), 2)}))


if __name__ == "__main__":
    main()
