"""Bad input is refused at the edge: every command answers one line ``error: <file or flag>:
<field>: <reason>``, exits 2 and starts nothing (no Ray, no trial, no results directory, no
MLflow store or run). Each case below is one distinct malformed input, run through the real CLI
entry point in this process (and a few through the installed executable, for the exact stderr)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from sweeps.cli import main
from tests.sweep_helpers import QUICKSTART, free_port

REPO = Path(__file__).resolve().parents[1]


def good_arrays(rng_seed: int = 0) -> dict[str, np.ndarray]:
    """A small valid Keras-layout dataset: 4 classes, every class in train."""
    rng = np.random.default_rng(rng_seed)
    return {"x_train": rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
            "y_train": np.arange(40) % 4,
            "x_test": rng.integers(0, 255, (12, 8, 8), dtype=np.uint8),
            "y_test": np.arange(12) % 4}


def npz_with(tmp: Path, **changes) -> Path:
    arrays = {**good_arrays(), **changes}
    path = tmp / "data.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# Each case: (setup(tmp, npz_path) -> argv, what the error line must contain). argv runs in tmp.
Case = Callable[[Path, Path], list[str]]


def imp_on(data: Callable[[Path, Path], Path]) -> Case:
    """`lt-sweep imp` of a LeNet config on the data file ``data`` builds."""
    def argv(tmp: Path, npz: Path) -> list[str]:
        config = {"model": {"name": "lenet_300_100"},
                  "data": {"name": "npz", "path": str(data(tmp, npz))},
                  "train": {"length": "1it"}, "imp": {"levels": 1}}
        (tmp / "exp.yaml").write_text(yaml.safe_dump(config))
        return ["imp", "exp.yaml", "--out", str(tmp / "run")]
    return argv


def run_with(*overrides: str, command: str = "run") -> Case:
    """`lt-sweep run` (or validate) of the quickstart on the real data with ``--set`` values."""
    def argv(tmp: Path, npz: Path) -> list[str]:
        values = [o.replace("{tmp}", str(tmp)).replace("{npz}", str(npz)) for o in overrides]
        sets = [f"--set=base.data.path={npz}", "--set=base.imp.levels=1",
                f"--set=run.storage_path={tmp / 'results'}"]
        return [command, str(QUICKSTART), *sets, *(f"--set={v}" for v in values)]
    return argv


def a_source_run(tmp: Path, npz: Path) -> Path:
    """A finished one-level LeNet run on 28x28 MNIST images, to transfer tickets from."""
    from lt_core.config import config_from_dict
    from lt_core.imp import ImpRun

    config = config_from_dict({"model": {"name": "lenet_300_100"},
                               "data": {"name": "npz", "path": str(npz),
                                        "train_split": "train[:120]", "test_split": "test[:20]"},
                               "train": {"length": "1it"}, "imp": {"levels": 1}})
    ImpRun(config, tmp / "source").run()
    return tmp / "source"


def colour_32x32(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp / "colour.npz"
    np.savez(path, x_train=rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(40) % 10, x_test=rng.integers(0, 255, (10, 32, 32, 3),
                                                               dtype=np.uint8),
             y_test=np.arange(10) % 10)
    return path


def file_in_the_way(tmp: Path) -> Path:
    return write(tmp, "taken", "a file, not a folder")


CASES: dict[str, tuple[Case, str]] = {
    # ---- the data file
    "npz that is text": (imp_on(lambda t, n: write(t, "d.npz", "x_train,y_train\n1,2\n")),
                         "is not a readable npz archive"),
    "npz cut short": (imp_on(lambda t, n: write(t, "d.npz", n.read_bytes()[:5000])),
                      "is not a readable npz archive"),
    "npy, one array": (imp_on(lambda t, n: (np.save(t / "d.npy", np.zeros(3)), t / "d.npy")[1]),
                       "holds one array, not an npz archive"),
    "no y_test": (imp_on(lambda t, n: npz_with(t, y_test=None)), "lacks ['y_test']"),
    "float images": (imp_on(lambda t, n: npz_with(t, x_train=np.zeros((40, 8, 8), np.float32))),
                     "x_train must be uint8 images"),
    "float labels": (imp_on(lambda t, n: npz_with(t, y_train=np.arange(40) % 4 + 0.5)),
                     "y_train must be a 1-D array of integer class labels"),
    "2-D labels": (imp_on(lambda t, n: npz_with(t, y_train=np.zeros((40, 2), np.int64))),
                   "y_train must be a 1-D array"),
    "train lengths differ": (imp_on(lambda t, n: npz_with(t, y_train=np.arange(39) % 4)),
                             "x_train has 40 images but y_train 39 labels"),
    "test lengths differ": (imp_on(lambda t, n: npz_with(t, y_test=np.arange(13) % 4)),
                            "x_test has 12 images but y_test 13 labels"),
    "negative labels": (imp_on(lambda t, n: npz_with(t, y_train=np.arange(40) % 4 - 1)),
                        "y_train has negative labels (-1)"),
    "a class never in train": (imp_on(lambda t, n: npz_with(t, y_train=np.arange(40) % 2 * 3)),
                               "classes 1, 2 of 0..3 never occur in the training split"),
    "one class only": (imp_on(lambda t, n: npz_with(t, y_train=np.zeros(40, np.int64),
                                                    y_test=np.zeros(12, np.int64))),
                       "a classifier needs at least two classes"),
    "train and test shapes differ": (
        imp_on(lambda t, n: npz_with(t, x_test=np.zeros((12, 9, 9), np.uint8))),
        "train images are (8, 8) but test images (9, 9)"),
    "pickled objects": (imp_on(lambda t, n: npz_with(t, y_test=np.array([1, "a"] * 6,
                                                                        dtype=object))),
                        "is not a readable npz archive"),
    "empty arrays": (imp_on(lambda t, n: npz_with(t, x_test=np.zeros((0, 8, 8), np.uint8),
                                                  y_test=np.zeros(0, np.int64))),
                     "the test arrays are empty"),
    "data path is a folder": (imp_on(lambda t, n: t), "is not a file"),
    "split without every class": (run_with("base.data.train_split=train[:3]",
                                           command="validate"),
                                  "never occur in the training split 'train[:3]'"),
    # ---- output and storage paths
    "--out is a file": (lambda t, n: [*imp_on(lambda t2, n2: n)(t, n)[:2], "--out",
                                      str(file_in_the_way(t))],
                        "--out: "),
    "--out under a file": (lambda t, n: [*imp_on(lambda t2, n2: n)(t, n)[:2], "--out",
                                         str(file_in_the_way(t) / "run")],
                           "cannot be created"),
    "--out name too long": (lambda t, n: [*imp_on(lambda t2, n2: n)(t, n)[:2], "--out",
                                          str(t / ("x" * 300))],
                            "a name is over 255 bytes"),
    "storage path is a file": (
        lambda t, n: run_with(f"run.storage_path={file_in_the_way(t)}")(t, n),
        "run.storage_path: "),
    "storage path under a file": (
        lambda t, n: run_with(f"run.storage_path={file_in_the_way(t) / 'results'}")(t, n),
        "run.storage_path: "),
    "report --out is a file": (lambda t, n: ["report", "quickstart", "--out",
                                             str(file_in_the_way(t))],
                               "--out: "),
    # ---- the tracking URI
    "unknown scheme": (run_with("tracking.uri=sqlit:///{tmp}/m.db"),
                       "is not a tracking URI MLflow supports"),
    "sqlite with two slashes": (run_with("tracking.uri=sqlite://m.db"), "three slashes"),
    "sqlite without a path": (run_with("tracking.uri=sqlite:///"),
                         "in-memory SQLite store would lose the sweep"),
    "sqlite folder missing": (run_with("tracking.uri=sqlite:///{tmp}/nowhere/m.db"),
                              "its folder"),
    "sqlite path is a folder": (run_with("tracking.uri=sqlite:///{tmp}"),
                                "is a directory, not an SQLite database file"),
    "sqlite file is not a database": (
        lambda t, n: run_with(f"tracking.uri=sqlite:///{write(t, 'm.db', 'hello world!' * 4)}")(
            t, n),
        "is not an SQLite database"),
    "no server answers": (lambda t, n: run_with(
        f"tracking.uri=http://127.0.0.1:{free_port()}")(t, n), "no MLflow server answers"),
    "report on a store that is not there": (
        lambda t, n: ["report", "quickstart", "--tracking-uri", f"sqlite:///{t / 'none.db'}"],
        "--tracking-uri: no MLflow store at"),
    # ---- resources and devices
    "more CPUs than any node": (run_with("resources.cpu=4096"),
                                "resources.cpu: each trial asks for 4096 CPUs"),
    "a GPU on a CPU-only machine": (run_with("resources.gpu=1"),
                                    "resources.gpu: each trial asks for 1 GPU"),
    "cuda without a GPU per trial": (run_with("base.device=cuda"),
                                     "base.device: 'cuda' but resources.gpu is 0"),
    "unknown device": (run_with("base.device=tpu", command="validate"), "device: String should"),
    # ---- ticket transfer
    "transfer from a folder that is not a run": (run_with("base.imp.ticket_from={tmp}"),
                                                 "base.imp.ticket_from: "),
    "transfer to inputs the architecture cannot take": (
        lambda t, n: run_with(f"base.imp.ticket_from={a_source_run(t, n)}",
                              f"base.data.path={colour_32x32(t)}")(t, n),
        "base.imp.ticket_from: the source's fc1.weight is 300x784, but lenet_300_100 on this "
        "data needs 300x3072"),
    "transfer from an MLflow run the store lacks": (
        lambda t, n: run_with("base.imp.ticket_from=" + "0123456789abcdef" * 2,
                              f"tracking.uri=sqlite:///{t / 'none.db'}")(t, n),
        "base.imp.ticket_from: MLflow run 0123456789abcdef0123456789abcdef"),
    "refining a transfer": (
        lambda t, n: run_with(f"base.imp.ticket_from={a_source_run(t, n)}",
                              "breakdown.refine=2", command="validate")(t, n),
        "breakdown.refine: a transfer study"),
    # ---- seeds trained in one trial (base.seeds)
    "seeds that are not a list of integers": (run_with("base.seeds=[0, -1]"),
                                              "base.seeds: expected a non-empty list"),
    "a seed given twice": (run_with("base.seeds=[3, 3]"), "base.seeds: [3, 3] repeats a seed"),
    "seeds and a seed": (run_with("base.seeds=[0, 1]", "base.seed=4"),
                         "base.seeds: give either base.seed or base.seeds"),
    "seeds and a swept seed": (run_with("base.seeds=[0, 1]", "space.seed.grid=[0, 1]"),
                               "space.seed: the study trains base.seeds"),
    "seeds with optuna": (run_with("base.seeds=[0, 1]", "search.algorithm=optuna",
                                   "space.pruning.rate.uniform=[0.2, 0.6]",
                                   "space.pruning.scope.choice=[global]"),
                          "base.seeds: search 'optuna' takes one objective value"),
    # ---- flags
    "negative report tolerance": (lambda t, n: ["report", "quickstart", "--tolerance", "-1"],
                                  "--tolerance: -1"),
    "resume of a folder that is not a sweep": (lambda t, n: ["resume", str(t)],
                                               "not an lt-sweep results directory"),
    "sync of a folder that is not a sweep": (lambda t, n: ["sync", str(t)],
                                             "not an lt-sweep results directory"),
    "refine of a folder that is not a sweep": (lambda t, n: ["refine", str(t)],
                                               "not an lt-sweep results directory"),
}


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_starts_nothing(case, tmp_path, npz_path, capsys,
                                                         monkeypatch) -> None:
    setup, expected = CASES[case]
    if case == "a GPU on a CPU-only machine":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path, npz_path)
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert snapshot(tmp_path) == before  # no results folder, no mlflow.db, no run directory
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_there_are_at_least_30_distinct_cases() -> None:
    assert len(CASES) >= 30 and len({expected for _, expected in CASES.values()}) >= 25


def test_the_executable_prints_one_line_without_a_traceback(tmp_path, npz_path) -> None:
    """Through the installed `lt-sweep` entry point, in a fresh process."""
    taken = file_in_the_way(tmp_path)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lt-sweep")), "run", str(QUICKSTART),
         f"--set=base.data.path={npz_path}", f"--set=run.storage_path={taken}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"error: {QUICKSTART}: run.storage_path: {taken} is an existing file, "
                           f"not a directory\n")
    assert snapshot(tmp_path) == {"taken"}  # no mlflow.db beside it
