"""One link that opens the MLflow UI on a sweep: its trial runs, one row each, and charts of
accuracy against density.

In MLflow 3 (checked in a real browser against 3.17.2's UI bundle):

- The runs page reads a saved view from the experiment tag ``mlflow.sharedViewState.<key>`` when
  its URL carries ``viewStateShareKey=<key>``. This is the UI's own "share" feature.
  - The tag holds ``{"name", "createdAt", "updatedAt", "state"}``.
  - ``state`` is ``"deflate;"`` followed by the base64 of the zlib-compressed JSON of the page
    state.
  - That state holds the search (filter, sort) and the chart cards.
  - The UI refuses tags longer than 20,000 characters.
- The URL also chooses:
  - the chart view: ``compareRunsMode=CHART``;
  - the training UI rather than the GenAI overview: ``workflowType=machine_learning``.
    MLflow 3.17 decides this from the URL, not from the experiment tag
    ``mlflow.experimentKind``. That tag is set too (``custom_model_development``): it is what
    the experiment kind is, and earlier 3.x UIs read it.
- The trial runs are child runs of the sweep's parent run.
  - The UI nests children under their parent only when runs are sorted by start time, so the
    view sorts them by name: every trial is then a row of its own.
  - The view filters on the sweep's tags (or, for a whole experiment, on trial runs), which
    leaves only those trials.
  - It shows all of them, not the default first ten.
"""

from __future__ import annotations

from collections.abc import Sequence

import base64
import json
import time
import zlib
from urllib.parse import quote

from mlflow import MlflowClient

from lt_core.metrics import BREAKDOWN_KEYS, INSTABILITY, NETWORK_KEYS, metric_name
from sweeps.layout import ROLE_TAG, SWEEP_TAG, tag_filter

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
MAX_TAG_CHARS = 20_000
DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
_SECTION = "model-metrics"


EXPERIMENT_VIEW = "lt-all-trials"


def view_key(sweep: str) -> str:
    """The share key of a sweep's view (study names are letters, digits, ``_ . -``)."""
    return f"lt-sweep-{sweep}"


def view_metrics(networks: list[str], metric: str,
                 analysed: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """What a view charts against density (each network's accuracy under the breakdown metric,
    and the error barrier of each ``analysed`` network), and every other per-trial metric, which
    it leaves out."""
    charted = [metric_name(metric, network) for network in networks]
    charted += [metric_name(INSTABILITY, network) for network in analysed]
    every = ["density", "sparsity", "dense_test_acc"]
    every += [metric_name(key, network) for network in networks
              for key in (*NETWORK_KEYS, *BREAKDOWN_KEYS)]
    return charted, [name for name in every if name not in charted]


def _line_chart(y_metric: str, x_metric: str, deleted: bool = False) -> dict:
    """A chart card as the UI stores it: ``y_metric`` against ``x_metric`` (or against the step
    with ``x_metric`` empty); a deleted card keeps the UI from adding one for that metric."""
    return {
        "uuid": f"lt-{y_metric}", "type": "LINE", "runsCountToCompare": 100,
        "metricSectionId": _SECTION, "deleted": deleted, "isGenerated": False,
        "metricKey": y_metric, "selectedMetricKeys": [y_metric], "lineSmoothness": 0,
        # Linear: MLflow 3.17's charts take a log x-axis only for steps, not for a metric such
        # as density (the report's figures put density on a log axis).
        "xAxisScaleType": "linear", "scaleType": "linear", "range": {},
        "xAxisKey": "metric" if x_metric else "step", "selectedXAxisMetricKey": x_metric,
        "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
        "useGlobalXaxisKey": False, "useGlobalLineSmoothing": True,
    }


def view_state(search_filter: str, charted: list[str], hidden: list[str],
               x_metric: str = "density") -> dict:
    """The runs page: the runs ``search_filter`` selects, sorted by name, every one shown, a
    chart of each ``charted`` metric against ``x_metric`` and none of ``hidden``."""
    cards = [_line_chart(metric, x_metric) for metric in charted]
    cards += [_line_chart(metric, "", deleted=True) for metric in hidden if metric not in charted]
    return {
        "searchFilter": search_filter,
        "orderByKey": "tags.`mlflow.runName`",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": cards,
        "compareRunSections": [
            {"uuid": _SECTION, "name": "Model metrics", "display": True, "isReordered": False,
             "deleted": False, "isGenerated": True},
            {"uuid": "system-metrics", "name": "System metrics", "display": True,
             "isReordered": False, "deleted": False, "isGenerated": True},
        ],
        "isAccordionReordered": False,
        "viewMaximized": False,
        "runListHidden": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "globalLineChartConfig": {"xAxisKey": "metric", "selectedXAxisMetricKey": x_metric,
                                  "lineSmoothness": 0},
    }


def view_tag_value(name: str, state: dict) -> str:
    """The saved view: its name and the compressed page state."""
    compressed = base64.b64encode(zlib.compress(json.dumps(state, separators=(",", ":"))
                                                .encode())).decode()
    now = int(time.time() * 1000)
    value = json.dumps({"name": name, "createdAt": now, "updatedAt": now,
                        "state": "deflate;" + compressed}, separators=(",", ":"))
    if len(value) > MAX_TAG_CHARS:
        raise ValueError(f"the saved view is {len(value)} characters, over the UI's "
                         f"{MAX_TAG_CHARS}")
    return value


def ensure_view(client: MlflowClient, experiment_id: str, networks: list[str], metric: str,
                sweep: str | None = None, analysed: Sequence[str] = ()) -> str:
    """Mark the experiment as model training and store the view of one sweep's trial runs (or,
    without ``sweep``, of every trial run in the experiment); returns its share key."""
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    tags = {ROLE_TAG: "trial", **({SWEEP_TAG: sweep} if sweep else {})}
    key = view_key(sweep) if sweep else EXPERIMENT_VIEW
    name = f"{sweep or 'all trials'}: {metric} vs density"
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, view_tag_value(
        name, view_state(tag_filter(tags), *view_metrics(networks, metric, analysed))))
    return key


def link_lines(tracking_uri: str, experiment_id: str, key: str) -> list[str]:
    """What a command prints at its end: the link, and for a local store how to start the UI."""
    lines = [f"MLflow: {sweep_link(tracking_uri, experiment_id, key)}"]
    hint = ui_hint(tracking_uri)
    if hint:
        lines.append(f"  (start the UI first: {hint})")
    return lines


def ui_base(tracking_uri: str) -> str:
    """Where the UI of this store is served: the tracking server itself, or `mlflow ui`'s
    default address for a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI


def sweep_link(tracking_uri: str, experiment_id: str, key: str) -> str:
    """The link that opens the saved view on the runs page, in chart mode, training UI. Nothing
    else may be in the query: the UI skips a saved view when the URL has search settings."""
    return (f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?"
            f"viewStateShareKey={quote(key)}&compareRunsMode=CHART&"
            f"workflowType=machine_learning")


def ui_hint(tracking_uri: str) -> str | None:
    """How to start the UI for a local store (None for a tracking server, which is the UI)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri}   (serves {DEFAULT_UI})"
