"""A transfer study's source (``base.imp.ticket_from``) given as an MLflow run id: the trial run's
run directory (its ``lt.run_dir`` tag), read on the driver before anything starts."""

from __future__ import annotations

import re
from pathlib import Path

from lt_core.errors import ConfigError
from sweeps.layout import RUN_DIR_TAG

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_ticket_source(value: str, tracking_uri: str, field: str) -> str:
    """``value`` itself when it is not an MLflow run id (a path), else that run's directory."""
    if not RUN_ID.match(value) or Path(value).exists():
        return value
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sweeps.preflight import check_tracking_uri

    check_tracking_uri(tracking_uri, f"{field}: MLflow run {value}: tracking URI",
                       must_exist=True)
    try:
        run = MlflowClient(tracking_uri).get_run(value)
    except MlflowException:
        raise ConfigError(f"{field}: no MLflow run {value} in {tracking_uri}") from None
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    if not run_dir:
        raise ConfigError(f"{field}: MLflow run {value} is not an lt-sweep trial run (it has no "
                          f"{RUN_DIR_TAG} tag)")
    return run_dir
