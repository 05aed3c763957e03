"""The names of what an IMP experiment measures, built in one place.

Each network trained at a level (the ticket, or a control such as ``reinit``) measures
``NETWORK_KEYS``. In a flat record (a Tune result, an MLflow run's metrics, a CSV row) the ticket's
value is named by its key alone and a control's ``<control>_<key>``: ``metric_name`` builds these
names and ``split_metric_name`` reads them back. Accuracies are fractions in [0, 1].

Which accuracy a breakdown is measured by is a choice (``ACCURACY_METRICS``):
  test_acc        at the end of training (open_lth's convention)
  early_stop_acc  at the early-stop iteration, the evaluation of minimum validation loss (Frankle &
                  Carbin 2019; with no validation holdout the minimum test loss stands in)
  best_test_acc   the best evaluation of the run (optimistic: selected on the test set)
"""

from __future__ import annotations

TICKET = "ticket"
# 1.0 when the network's training loss became NaN/inf (it stopped there: its level is diverged),
# else 0.0. In metrics.json it is the network's STATUS_KEY: STATUS_OK or STATUS_DIVERGED.
DIVERGED = "diverged"
STATUS_KEY, STATUS_OK, STATUS_DIVERGED = "status", "ok", "diverged"
# The instability analysis (lt_core.analyses.instability): the error barrier on the linear path
# to a second copy trained with another data order, in percentage points of test (train) error,
# and that copy's final test accuracy.
INSTABILITY, INSTABILITY_TRAIN, COPY_TEST_ACC = "instability", "instability_train", "copy_test_acc"
NETWORK_KEYS = ("test_acc", "best_test_acc", "early_stop_acc", "test_loss", "train_loss",
                "early_stop_iter", "train_seconds", DIVERGED, INSTABILITY, INSTABILITY_TRAIN,
                COPY_TEST_ACC)
ACCURACY_METRICS = ("test_acc", "early_stop_acc", "best_test_acc")
# Keys of the level itself (every network of a level shares its density).
POINT_KEYS = ("level", "sublevel", "density", "sparsity")
# A network's breakdown in one experiment (lt_core.breakdown.Breakdown.values), named per network
# like its measurements: "breakdown_sparsity_est", "reinit_breakdown_sparsity_est".
BREAKDOWN_KEYS = ("breakdown_sparsity", "breakdown_sparsity_low", "breakdown_sparsity_high",
                  "breakdown_sparsity_est", "breakdown_censored", "breakdown_diverged")


def metric_name(key: str, network: str = TICKET) -> str:
    """The flat name of a network's measurement: ``key`` for the ticket, ``<control>_<key>``."""
    return key if network == TICKET else f"{network}_{key}"


def networks() -> tuple[str, ...]:
    """The ticket and every registered control."""
    from lt_core.controls import CONTROLS  # the registry (imports torch): only once names are read

    return (TICKET, *CONTROLS)


def split_metric_name(name: str, key_set: tuple[str, ...] = NETWORK_KEYS) -> tuple[str, str] | None:
    """(network, key) of a flat name built by ``metric_name`` from a key of ``key_set``, or None
    when it is not one (``dense_test_acc`` is not network "dense"'s ``test_acc``)."""
    if name in key_set:
        return TICKET, name
    for key in sorted(key_set, key=len, reverse=True):
        prefix = name[: -len(key) - 1]
        if name.endswith(f"_{key}") and prefix in networks():
            return prefix, key
    return None
