"""The sweep layer's bad input, importable without MLflow or Ray (see lt_core.errors)."""

from __future__ import annotations


class ReportUnavailable(ValueError):
    """The experiment or its trial runs are not in the tracking store."""


class TrackingUnavailable(ConnectionError):
    """The MLflow tracking store did not answer (``lt-sweep sync`` is to be run again)."""
