"""Checks a sweep command makes before it starts anything: the tracking URI, and whether a trial's
resources fit on a node. Each failure is a ConfigError naming the field."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from lt_core.errors import ConfigError
from lt_core.paths import check_writable_dir

DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # SQLAlchemy stores (``+driver`` allowed)
SERVERS = ("http", "https")
OTHERS = ("file", "databricks")
SQLITE_MAGIC = b"SQLite format 3\x00"
HEALTH_TIMEOUT_S = 5.0


def _supported() -> str:
    return ("sqlite:///PATH, postgresql://, mysql://, mssql://, http(s)://HOST:PORT, file:PATH, "
            "databricks or a local directory")


def check_tracking_uri(uri: str, field: str, must_exist: bool = False) -> None:
    """The URI names a store MLflow can use: a known scheme; for SQLite a database file that is
    one (or can be created: its folder exists and is writable); for a server, one that answers
    its health check. ``must_exist``: a local store must already be there (reading, not
    creating)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+", 1)[0].lower()
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):  # a local directory (file store)
        _check_local_store(Path(uri).expanduser().resolve(), field, must_exist)
    elif scheme == "sqlite":
        _check_sqlite(uri, field, must_exist)
    elif scheme in SERVERS:
        _check_server(uri, field)
    elif scheme == "file":
        _check_local_store(Path(parsed.path).expanduser().resolve(), field, must_exist)
    elif scheme not in DATABASES + OTHERS:
        raise ConfigError(f"{field}: {uri!r} is not a tracking URI MLflow supports (scheme "
                          f"{parsed.scheme!r}; use {_supported()})")


def _check_local_store(path: Path, field: str, must_exist: bool) -> None:
    if must_exist and not path.is_dir():
        raise ConfigError(f"{field}: no MLflow store at {path}")
    check_writable_dir(path, field)


def _check_sqlite(uri: str, field: str, must_exist: bool) -> None:
    if not uri.lower().startswith("sqlite:///"):
        raise ConfigError(f"{field}: {uri!r}: an SQLite URI is sqlite:///PATH (three slashes, "
                          f"then the path; four for an absolute one)")
    text = uri[len("sqlite:///"):]
    if text in ("", ":memory:"):
        raise ConfigError(f"{field}: {uri!r}: an in-memory SQLite store would lose the sweep; "
                          f"name a file")
    path = Path(text).expanduser().resolve()
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"{field}: {path} is a directory, not an SQLite database file")
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise ConfigError(f"{field}: {path} is not an SQLite database")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{field}: {path} is not writable")
        return
    if must_exist:
        raise ConfigError(f"{field}: no MLflow store at {path}")
    if not path.parent.is_dir():
        raise ConfigError(f"{field}: {path} cannot be created: its folder {path.parent} does not "
                          f"exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: {path} cannot be created: {path.parent} is not writable")


def _check_server(uri: str, field: str) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        reason = f"HTTP {err.code}"
    except (OSError, ValueError) as err:
        reason = str(getattr(err, "reason", err)) or type(err).__name__
    raise ConfigError(f"{field}: no MLflow server answers at {uri} ({reason}); start it "
                      f"(mlflow server --host 127.0.0.1 --port PORT) or fix the URI")


# ---- resources ----------------------------------------------------------------------------------
def local_node() -> dict[str, float]:
    """What a local Ray would offer: this machine's CPUs (as Ray counts them) and GPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    import torch

    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}


def cluster_nodes() -> list[dict[str, float]]:
    """Every alive node's total resources, from the Ray this process is connected to."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def check_resources(cpu: float, gpu: float, nodes: list[dict[str, float]], where: str,
                    field: str, cluster: bool) -> None:
    """A trial's CPUs and GPUs fit on at least one node, else it would wait forever."""
    for name, wanted in (("CPU", cpu), ("GPU", gpu)):
        largest = max((node.get(name, 0.0) for node in nodes), default=0.0)
        if wanted > largest:
            hint = (" If the cluster adds larger nodes when asked (autoscaling), run again with "
                    "--wait-for-resources." if cluster else "")
            raise ConfigError(f"{field}: resources.{name.lower()}: each trial asks for "
                              f"{wanted:g} {name}{'s' if wanted != 1 else ''}, but the largest "
                              f"node of {where} has {largest:g}; the trials would wait "
                              f"forever.{hint}")
