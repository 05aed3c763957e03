"""MLflow logging from the Tune driver, against a real SQLite MLflow store and real Tune Trials:
run reuse by Ray trial id and sweep, no duplicate level steps (also after a driver restart),
summaries at trial and sweep end, and a store that stops answering for a while."""

from __future__ import annotations

import inspect
import pickle
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from ray.tune.experiment import Trial

from lt_core.config import config_from_dict
from sweeps import tracking
from sweeps.layout import WORKER_TAG
from sweeps.report import build_report
from sweeps.study import Breakdown
from sweeps.tracking import (MlflowLevelLogger, config_label, ensure_child_run, ensure_parent_run,
                             experiment_id_for, flatten, log_point, logged_points, param_text,
                             records_of)

DENSE_ACC = 0.98


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store per module (creating its tables takes seconds); tests use their own
    experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def experiment(store, request) -> tuple[MlflowClient, str]:
    client = MlflowClient(store)
    return client, experiment_id_for(client, request.node.name, store)


def one_run(trial_id: str, swept: dict) -> list[tuple[str, dict]]:
    """Study.members of a study without base.seeds: the trial is its one run."""
    return [(trial_id, swept)]


def one_member(trial_id: str, swept: dict, seed: int | None = None) -> tuple[str, dict]:
    """Study.member of such a study."""
    return trial_id, swept


def make_study(tmp_path: Path, name: str = "lenet-rate",
               metric: str = "test_acc") -> SimpleNamespace:
    """A stand-in for sweeps.study.Study with the attributes the logger reads."""
    raw = {"name": name, "base": "examples/lenet.yaml", "breakdown": {"tolerance": 1.0},
           "search": {"pruning.rate": {"grid": [0.2, 0.4]}, "seed": {"grid": [0, 1]}},
           "notes": "x" * 7000}
    source = tmp_path / "study.yaml"
    source.write_text(f"name: {name}\n")
    return SimpleNamespace(name=name, raw=raw, source_path=source, storage_path=tmp_path,
                           swept_keys=["pruning.rate", "seed"], space={}, seeds=[],
                           members=one_run, member=one_member,
                           base_config=partial(resolve_config, None, {"imp.controls": ["reinit"]}),
                           breakdown=Breakdown(tolerance=1.0, metric=metric))


def resolve_config(study, params: dict):
    """Resolved experiment config of a trial: the swept dotted values on a minimal LeNet config."""
    raw: dict = {"model": {"name": "lenet_300_100"}, "data": {"name": "mnist"}}
    for dotted, value in params.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(raw, source="test")


def level_result(level: int, acc: float, reinit_acc: float | None = None) -> dict:
    """A Tune result as the trainable reports it for one level; the accuracy at early stop is
    the final one + 0.5 pp for the ticket, - 2 pp for reinit."""
    density = 0.8**level
    result = {"level": level, "density": density, "sparsity": 1 - density, "test_acc": acc,
              "best_test_acc": acc, "early_stop_acc": acc + 0.005, "test_loss": 0.1,
              "train_loss": 0.05, "early_stop_iter": 100,
              "train_seconds": 1.0, "train_samples": 6000, "dense_test_acc": DENSE_ACC,
              "run_dir": "/tmp/x", "training_iteration": level + 1}
    if reinit_acc is not None:
        result.update({"reinit_test_acc": reinit_acc, "reinit_best_test_acc": reinit_acc,
                       "reinit_early_stop_acc": reinit_acc - 0.02,
                       "reinit_test_loss": 0.2, "reinit_train_loss": 0.1,
                       "reinit_early_stop_iter": 90})
    return result


RESULTS = [level_result(0, DENSE_ACC), level_result(1, 0.981, 0.975),
           level_result(2, 0.975, 0.95), level_result(3, 0.96, 0.94)]


def make_trial(trial_id: str, rate: float, seed: int) -> Trial:
    return Trial("imp", config={"pruning.rate": rate, "seed": seed, "_study": "internal"},
                 trial_id=trial_id, stub=True)


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_flatten_and_param_text():
    tree = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}
    assert flatten(tree) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    assert param_text([0.2, 0.4]) == "[0.2, 0.4]"
    assert len(param_text("x" * 7000)) == 6000


def test_config_label_leaves_out_seed_and_sorts():
    assert config_label({"seed": 3, "pruning.scope": "global", "pruning.rate": 0.2}) == \
        "pruning.rate=0.2, pruning.scope=global"


def test_parent_run_is_reused(experiment, tmp_path):
    client, experiment_id = experiment
    study = make_study(tmp_path)
    first = ensure_parent_run(client, experiment_id, study)
    client.set_terminated(first, "KILLED")
    assert ensure_parent_run(client, experiment_id, study) == first
    run = client.get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.tags["lt.role"] == "parent" and run.data.tags["lt.sweep"] == study.name
    assert run.data.params["search.pruning.rate.grid"] == "[0.2, 0.4]"
    assert run.data.params["breakdown.tolerance"] == "1.0"
    assert run.data.params["swept_keys"] == "pruning.rate,seed"
    assert len(run.data.params["notes"]) == 6000
    artifacts = {a.path for a in client.list_artifacts(first)}
    assert artifacts == {"study.yaml", "study_resolved.yaml"}


def test_child_run_is_reused_by_trial_id_and_sweep(experiment):
    client, experiment_id = experiment
    args = (client, experiment_id, "parent-id")
    swept = {"pruning.rate": 0.2, "seed": 1}
    run_id = ensure_child_run(*args, "sweep-a", "t1", swept, params=swept)
    assert ensure_child_run(*args, "sweep-a", "t1", swept, params=swept) == run_id
    other_sweep = ensure_child_run(*args, "sweep-b", "t1", swept, {"seed": 1})
    assert other_sweep != run_id
    runs = client.search_runs([experiment_id], "tags.ray_trial_id = 't1'")
    assert len(runs) == 2
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.parentRunId"] == "parent-id" and tags["lt.role"] == "trial"
    assert tags["lt.config"] == "pruning.rate=0.2" and tags["mlflow.runName"] == "rate=0.2 seed=1"


def test_each_value_of_each_point_is_logged_once(experiment):
    client, experiment_id = experiment
    run_id = client.create_run(experiment_id).info.run_id
    logged: dict = {}
    assert log_point(client, run_id, RESULTS[0], logged)
    assert log_point(client, run_id, RESULTS[1], logged)
    assert not log_point(client, run_id, RESULTS[1], logged)
    assert not log_point(client, run_id, RESULTS[0], logged)
    # A control measured later at level 1 (control_levels: breakdown) adds only its values.
    later = {**RESULTS[1], "random_prune_test_acc": 0.9}
    assert log_point(client, run_id, later, logged)
    # A refinement point: its values under refine/ at step 1000 * level + sublevel.
    refined = {"level": 1, "sublevel": 250, "density": 0.8**1.25, "sparsity": 1 - 0.8**1.25,
               "test_acc": 0.977, "dense_test_acc": DENSE_ACC}
    assert log_point(client, run_id, refined, logged)
    assert not log_point(client, run_id, refined, logged)
    assert steps(client, run_id, "test_acc") == [0, 1]
    assert steps(client, run_id, "reinit_test_acc") == [1]
    assert steps(client, run_id, "random_prune_test_acc") == [1]
    assert steps(client, run_id, "refine/test_acc") == [1250]
    assert steps(client, run_id, "refine/density") == [1250]
    metrics = client.get_run(run_id).data.metrics
    assert "run_dir" not in metrics and "dense_test_acc" not in metrics
    rebuilt = logged_points(client, run_id)
    assert rebuilt == pytest.approx(logged)
    records = records_of(rebuilt)
    assert [(r.level, r.sublevel) for r in records] == [(0, 0), (1, 0), (1, 250)]
    assert records[1].value("reinit", "test_acc") == pytest.approx(0.975)
    assert records[2].value("ticket", "test_acc") == pytest.approx(0.977)


def test_logger_logs_levels_and_summaries(store, tmp_path, request):
    name = request.node.name
    logger = MlflowLevelLogger(make_study(tmp_path), store, name, resolve_config=resolve_config)
    logger.setup()
    trial = make_trial("trial_00000", 0.2, 0)
    logger.on_trial_start(0, [trial], trial)
    for result in RESULTS:
        logger.on_trial_result(0, [trial], trial, result)
    logger.on_trial_result(0, [trial], trial, RESULTS[-1])  # a repeated report
    logger.on_trial_result(0, [trial], trial, {"done": True})  # a result without a level
    logger.on_trial_complete(0, [trial], trial)

    client = MlflowClient(store)
    run = client.get_run(logger.trial_run_id(trial))
    assert run.info.status == "FINISHED"
    assert run.data.params["pruning.rate"] == "0.2"
    assert run.data.params["model.name"] == "lenet_300_100"
    assert "_study" not in run.data.params
    assert steps(client, run.info.run_id, "test_acc") == [0, 1, 2, 3]
    # Ticket: level 2 (0.975) within 1 pp of 0.98, level 3 (0.96) below: bracket (36%, 48.8%),
    # the 0.97 crossing a third of the way in log-density: 1 - 0.64 * 0.8^(1/3) = 40.59%.
    assert run.data.metrics["breakdown_sparsity"] == pytest.approx(1 - 0.8**2)
    assert run.data.metrics["breakdown_sparsity_low"] == pytest.approx(1 - 0.8**2)
    assert run.data.metrics["breakdown_sparsity_high"] == pytest.approx(1 - 0.8**3)
    assert run.data.metrics["breakdown_sparsity_est"] == pytest.approx(1 - 0.594123, abs=1e-6)
    assert run.data.metrics["breakdown_censored"] == 0.0
    assert run.data.metrics["reinit_breakdown_sparsity"] == pytest.approx(0.2)
    assert run.data.metrics["reinit_breakdown_sparsity_high"] == pytest.approx(0.36)
    assert run.data.metrics["dense_test_acc"] == pytest.approx(DENSE_ACC)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == \
        ["plots/accuracy_vs_density.png"]

    failing = make_trial("trial_00001", 0.4, 0)
    logger.on_trial_start(0, [trial, failing], failing)
    logger.on_trial_result(0, [trial, failing], failing, RESULTS[0])
    logger.on_trial_error(0, [trial, failing], failing)
    failed = client.get_run(logger.trial_run_id(failing))
    assert failed.info.status == "FAILED" and steps(client, failed.info.run_id, "test_acc") == [0]

    logger.on_experiment_end([trial, failing])
    parent = client.get_run(logger.parent_run_id)
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"breakdown.csv", "breakdown.txt", "plots"} <= artifacts
    table = Path(client.download_artifacts(parent.info.run_id, "breakdown.txt", str(tmp_path)))
    text = table.read_text()
    assert "pruning.rate=0.2" in text and "pruning.rate=0.4" not in text  # the failed trial
    assert "1 failed or killed trial runs left out" in text


def test_restarted_driver_reuses_runs_and_skips_logged_levels(store, tmp_path, request):
    name = request.node.name
    study = make_study(tmp_path)
    first = MlflowLevelLogger(study, store, name, resolve_config=resolve_config)
    first.setup()
    trial = make_trial("trial_00000", 0.2, 1)
    first.on_trial_start(0, [trial], trial)
    for result in RESULTS[:3]:
        first.on_trial_result(0, [trial], trial, result)

    # A new driver process: the callback comes back unpickled, the trial restarts from level 1.
    second = pickle.loads(pickle.dumps(first))
    second.setup()
    assert second.parent_run_id == first.parent_run_id
    restored = make_trial("trial_00000", 0.2, 1)
    second.on_trial_start(0, [restored], restored)
    assert second.trial_run_id(restored) == first.trial_run_id(trial)
    for result in RESULTS[1:]:
        second.on_trial_result(0, [restored], restored, result)
    second.on_trial_complete(0, [restored], restored)

    client = MlflowClient(store)
    run_id = second.trial_run_id(restored)
    experiment_id = client.get_experiment_by_name(name).experiment_id
    assert len(client.search_runs([experiment_id], "tags.`lt.role` = 'trial'")) == 1
    assert len(client.search_runs([experiment_id], "tags.`lt.role` = 'parent'")) == 1
    for key in ("test_acc", "density", "reinit_test_acc"):
        history = steps(client, run_id, key)
        assert history == sorted(set(history)) and history[-1] == 3
    assert [record.level for record in second.trial_levels(restored)] == [0, 1, 2, 3]
    assert client.get_run(run_id).data.metrics["breakdown_sparsity"] == pytest.approx(1 - 0.8**2)


def test_a_failed_refinement_leaves_the_trial_finished(store, tmp_path, request):
    logger = MlflowLevelLogger(make_study(tmp_path), store, request.node.name,
                               resolve_config=resolve_config)
    logger.setup()
    trial = make_trial("trial_00000", 0.2, 0)
    logger.on_trial_start(0, [trial], trial)
    for result in RESULTS:
        logger.on_trial_result(0, [trial], trial, result)
    logger.on_trial_complete(0, [trial], trial)
    # lt-sweep refine: another Tune trial, logging to the same run, that fails.
    refine = Trial("refine", trial_id="r_00000", stub=True, config={
        "_refine": {"trial_id": "trial_00000", "swept": {"pruning.rate": 0.2, "seed": 0}}})
    logger.on_trial_start(0, [refine], refine)
    run_id = logger.trial_run_id(refine)
    assert run_id == logger.trial_run_id(trial)
    refined = {"level": 2, "sublevel": 500, "density": 0.8**2.5, "sparsity": 1 - 0.8**2.5,
               "test_acc": 0.972}
    logger.on_trial_result(0, [refine], refine, refined)
    logger.on_trial_error(0, [refine], refine)
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["lt.refine_failed"] == "r_00000"
    assert steps(MlflowClient(store), run_id, "refine/test_acc") == [2500]
    assert len(build_report(store, request.node.name).configurations[0].trials) == 1


def test_breakdown_metric_is_the_studys(store, tmp_path, request):
    """With breakdown.metric early_stop_acc the trial summary, the parent param and the sweep
    table use the accuracy at early stop (level 3's final accuracy dips, its early-stop accuracy
    does not; reinit's early-stop accuracy is 2 pp lower)."""
    logger = MlflowLevelLogger(make_study(tmp_path, metric="early_stop_acc"), store,
                               request.node.name, resolve_config=resolve_config)
    logger.setup()
    trial = make_trial("trial_00000", 0.2, 0)
    logger.on_trial_start(0, [trial], trial)
    results = [level_result(0, DENSE_ACC), level_result(1, 0.981, 0.975),
               level_result(2, 0.975, 0.985), level_result(3, 0.96, 0.94)]
    results[3]["early_stop_acc"] = 0.978  # within 1 pp of the dense 0.985 at early stop
    for result in results:
        logger.on_trial_result(0, [trial], trial, result)
    logger.on_trial_complete(0, [trial], trial)
    logger.on_experiment_end([trial])

    client = MlflowClient(store)
    run = client.get_run(logger.trial_run_id(trial))
    assert run.data.metrics["breakdown_sparsity"] == pytest.approx(1 - 0.8**3)
    assert run.data.metrics["reinit_breakdown_sparsity"] == 0.0
    parent = client.get_run(logger.parent_run_id)
    assert parent.data.params["breakdown.metric"] == "early_stop_acc"
    text = Path(client.download_artifacts(parent.info.run_id, "breakdown.txt",
                                          str(tmp_path))).read_text()
    assert "where early_stop_acc falls 1 pp below" in text


class StoreOutage:
    """The tracking store stops answering: while ``down``, every call of the SQLite store's
    public methods raises what MLflow's REST client raises for a server that refuses
    connections."""

    def __init__(self, monkeypatch):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        self.down = False
        for name, method in vars(SqlAlchemyStore).items():
            if not name.startswith("_") and inspect.isfunction(method):
                monkeypatch.setattr(SqlAlchemyStore, name, self.wrap(method))

    def wrap(self, method):
        """``method``, failing while ``down``."""
        from mlflow.exceptions import MlflowException

        def call(*args, **kwargs):
            if self.down:
                raise MlflowException("API request to http://127.0.0.1:5000 failed with "
                                      "exception ... [Errno 111] Connection refused'))")
            return method(*args, **kwargs)
        return call


def one_trial_started(store, tmp_path, request, monkeypatch):
    """(an outage switch, still off; a logger set up; its one trial, started)."""
    outage = StoreOutage(monkeypatch)
    logger = MlflowLevelLogger(make_study(tmp_path), store, request.node.name,
                               resolve_config=resolve_config)
    logger.setup()
    trial = make_trial("trial_00000", 0.2, 0)
    logger.on_trial_start(0, [trial], trial)
    return outage, logger, trial


def test_what_mlflow_missed_is_logged_once_it_answers(store, tmp_path, request, monkeypatch):
    """Down from level 1 to past the trial's end: no hook raises or waits, the trial's levels,
    summary and status are kept and logged at the first callback once MLflow answers again
    (after RETRY_SECONDS), each level once, before the sweep ends."""
    monkeypatch.setattr(tracking, "RETRY_SECONDS", 0.2)
    outage, logger, trial = one_trial_started(store, tmp_path, request, monkeypatch)
    logger.on_trial_result(0, [trial], trial, RESULTS[0])
    outage.down = True
    for result in RESULTS[1:]:
        logger.on_trial_result(0, [trial], trial, result)
    logger.on_trial_complete(0, [trial], trial)
    logger.on_step_end(0, [trial])
    assert logger.outages == 1 and "Connection refused" in tracking.short_reason(logger.error)
    assert logger.unlogged() == "1 trial run"

    outage.down = False
    time.sleep(1.1)  # past RETRY_SECONDS and the once-a-second check of Tune's loop
    logger.on_step_end(0, [trial])
    assert logger.error is None and logger.unlogged() is None
    client = MlflowClient(store)
    run = client.get_run(logger.trial_run_id(trial))
    assert run.info.status == "FINISHED"
    for key in ("test_acc", "density", "early_stop_acc"):
        assert steps(client, run.info.run_id, key) == [0, 1, 2, 3], key
    assert steps(client, run.info.run_id, "reinit_test_acc") == [1, 2, 3]
    assert run.data.metrics["breakdown_sparsity"] == pytest.approx(1 - 0.8**2)

    logger.on_experiment_end([trial])
    assert logger.unlogged() is None and logger.report is not None
    assert client.get_run(logger.parent_run_id).info.status == "FINISHED"


def test_a_request_answered_while_the_server_goes_down_does_not_end_the_outage(
        store, tmp_path, request, monkeypatch):
    """A server going down still answers the requests it already had: a level whose log was
    under way in the writer thread when a write failed, answered after that failure, does not
    make MLflow answering again, so the next failure is the same outage, not a second one."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.setattr(tracking, "RETRY_SECONDS", 0.2)
    answering = SqlAlchemyStore.log_batch
    outage, logger, trial = one_trial_started(store, tmp_path, request, monkeypatch)
    logger.on_trial_result(0, [trial], trial, RESULTS[0])
    tracking.writer().submit(lambda: None).result(timeout=30)  # level 0 has landed

    in_flight, release = threading.Event(), threading.Event()

    def held(self, *args, **kwargs):  # done while the server answered; its answer comes later
        done = answering(self, *args, **kwargs)
        in_flight.set()
        assert release.wait(30)
        return done

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", held)
    logger.on_trial_result(0, [trial], trial, RESULTS[1])  # logged in the writer thread
    assert in_flight.wait(30)
    monkeypatch.setattr(SqlAlchemyStore, "log_batch", outage.wrap(answering))  # held: only one
    outage.down = True
    # A worker tag to set makes the trial's run written at once, in this thread: it fails.
    where = {"pid": 4242, "hostname": "node", "node_ip": "10.0.0.2"}
    logger.on_trial_result(0, [trial], trial, {**RESULTS[2], **where})
    assert logger.outages == 1
    release.set()
    tracking.writer().submit(lambda: None).result(timeout=30)  # the held level was answered
    assert logger.outages == 1 and logger.error is not None, "the outage is not over"

    time.sleep(0.3)  # past RETRY_SECONDS: the next write is tried, and fails
    logger.on_trial_result(0, [trial], trial, {**RESULTS[3], **where})
    assert logger.outages == 1, "one outage counted twice"

    outage.down = False
    time.sleep(1.1)
    logger.on_step_end(0, [trial])
    assert logger.unlogged() is None and logger.error is None and logger.outages == 1
    client = MlflowClient(store)
    run = client.get_run(logger.trial_run_id(trial))
    assert steps(client, run.info.run_id, "test_acc") == [0, 1, 2, 3]
    assert run.data.tags[WORKER_TAG] == "node (10.0.0.2) pid 4242"


def test_mlflow_down_at_the_sweeps_end_is_reported_not_raised(store, tmp_path, request,
                                                              monkeypatch):
    """Still down at the end: the summary waits END_WAIT_SECONDS for MLflow, then gives up
    without raising; the logger says what MLflow lacks."""
    monkeypatch.setattr(tracking, "END_WAIT_SECONDS", 0.5)
    outage, logger, trial = one_trial_started(store, tmp_path, request, monkeypatch)
    outage.down = True
    for result in RESULTS:
        logger.on_trial_result(0, [trial], trial, result)
    logger.on_trial_complete(0, [trial], trial)
    started = time.monotonic()
    logger.on_experiment_end([trial])
    assert 0.5 <= time.monotonic() - started < 5
    assert logger.unlogged() == "1 trial run and the sweep's summary"
    outage.down = False
    run = MlflowClient(store).get_run(logger.trial_run_id(trial))
    assert run.info.status == "FINISHED"  # trial_run_id brought it up to date


def test_trials_report_while_the_logger_connects_in_the_background(store, tmp_path, request,
                                                                   monkeypatch):
    """`lt-sweep run` starts Tune while the logger connects (a new SQLite store takes seconds):
    no hook waits for the connection, and what the trial reported meanwhile is logged, each
    level once, on Tune's next turn after it is made."""
    connecting = threading.Event()
    real = tracking.experiment_id_for

    def slow_experiment_id(*args, **kwargs):
        assert connecting.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking, "experiment_id_for", slow_experiment_id)
    logger = MlflowLevelLogger(make_study(tmp_path), store, request.node.name,
                               resolve_config=resolve_config)
    logger.open_in_background()
    trial = make_trial("trial_00000", 0.2, 0)

    def hooks() -> None:
        logger.setup()
        logger.on_trial_start(0, [trial], trial)
        for result in RESULTS:
            logger.on_trial_result(0, [trial], trial, result)
        logger.on_trial_complete(0, [trial], trial)
        logger.on_step_end(0, [trial])

    tune_loop = threading.Thread(target=hooks)
    tune_loop.start()
    tune_loop.join(5)
    assert not tune_loop.is_alive()  # no hook waited for the connection
    assert logger.unlogged() == "1 trial run"

    connecting.set()
    logger.connect()  # waits for the background connection
    time.sleep(1.1)  # past the once-a-second check of Tune's loop
    logger.on_step_end(0, [trial])
    assert logger.error is None and logger.unlogged() is None and logger.outages == 0
    client = MlflowClient(store)
    run = client.get_run(logger.trial_run_id(trial))
    assert run.info.status == "FINISHED"
    assert steps(client, run.info.run_id, "test_acc") == [0, 1, 2, 3]
    assert steps(client, run.info.run_id, "reinit_test_acc") == [1, 2, 3]
    assert logger.link_lines


def test_mlflow_down_while_the_logger_connects_is_an_outage(store, tmp_path, request,
                                                            monkeypatch):
    """A store that does not answer the background connection is an outage like any other:
    the hooks do not raise, and the trial is logged once it answers."""
    monkeypatch.setattr(tracking, "RETRY_SECONDS", 0.2)
    outage = StoreOutage(monkeypatch)
    outage.down = True
    logger = MlflowLevelLogger(make_study(tmp_path), store, request.node.name,
                               resolve_config=resolve_config)
    logger.open_in_background()
    assert logger._opening.done(60)  # the background connection, failed
    assert logger.outages == 1 and "Connection refused" in tracking.short_reason(logger.error)
    trial = make_trial("trial_00000", 0.2, 0)
    logger.setup()
    logger.on_trial_start(0, [trial], trial)
    for result in RESULTS:
        logger.on_trial_result(0, [trial], trial, result)
    logger.on_trial_complete(0, [trial], trial)
    outage.down = False
    time.sleep(1.1)
    logger.on_step_end(0, [trial])
    assert logger.unlogged() is None
    run = MlflowClient(store).get_run(logger.trial_run_id(trial))
    assert run.info.status == "FINISHED"
    assert steps(MlflowClient(store), run.info.run_id, "test_acc") == [0, 1, 2, 3]


def test_an_error_while_connecting_is_raised_by_the_next_hook(store, tmp_path, request,
                                                              monkeypatch):
    """Anything but MLflow not answering (here an experiment lookup that fails once) is not
    swallowed by the background connection: Tune's next hook raises it."""
    real, calls = tracking.experiment_id_for, []

    def broken(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("the experiment lookup broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking, "experiment_id_for", broken)
    logger = MlflowLevelLogger(make_study(tmp_path), store, request.node.name,
                               resolve_config=resolve_config)
    logger.open_in_background()
    assert logger._opening.done(60)  # the background connection, failed
    trial = make_trial("trial_00000", 0.2, 0)
    with pytest.raises(RuntimeError, match="experiment lookup broke"):
        logger.on_trial_start(0, [trial], trial)
    assert logger.outages == 0


def test_an_error_connecting_that_surfaces_at_the_sweeps_end_is_kept(store, tmp_path, request,
                                                                     monkeypatch):
    """A sweep stopped before any hook ran: the background summary meets the connection's error;
    the logger keeps it (the command prints it) and says the summary is not logged."""
    def broken(*args, **kwargs):
        raise RuntimeError("the experiment lookup broke")

    monkeypatch.setattr(tracking, "experiment_id_for", broken)
    logger = MlflowLevelLogger(make_study(tmp_path), store, request.node.name,
                               resolve_config=resolve_config)
    logger.open_in_background()
    logger.background_summary = True
    logger.on_experiment_end([])
    logger.finish_summary()
    assert "experiment lookup broke" in str(logger.error)
    assert logger.unlogged() == "the sweep's summary"
