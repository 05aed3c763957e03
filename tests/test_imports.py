"""What each command imports: the CLI answers `--help` and validates without torch's, MLflow's or
Ray's import cost, and lt_core never imports the sweep stack. Checked in fresh interpreters, where
``sys.modules`` shows what a command really loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "torchvision", "mlflow", "ray", "optuna", "matplotlib"]


def loaded_after(code: str) -> set[str]:
    """Top-level packages among HEAVY imported by running ``code`` in a fresh interpreter."""
    probe = (f"import sys\n{code}\nimport json\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & "
             f"set({HEAVY!r}))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_help_imports_none_of_the_heavy_libraries() -> None:
    code = ("from sweeps.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass")
    assert loaded_after(code) == set()


def test_validate_needs_torch_but_not_the_sweep_stack() -> None:
    code = "from sweeps.cli import main\nmain(['validate', 'search_spaces/quickstart.yaml'])"
    assert loaded_after(code) <= {"torch"}


@pytest.mark.parametrize("module", ["lt_core.imp", "lt_core.cli", "lt_core.breakdown",
                                    "lt_core.pruning", "lt_core.controls"])
def test_lt_core_never_imports_the_sweep_stack(module) -> None:
    assert loaded_after(f"import {module}") & {"ray", "mlflow", "optuna"} == set()


def test_reading_results_needs_no_torch() -> None:
    """A run directory's records and the report module load without torch (`lt-sweep report`
    answers a missing experiment without its import)."""
    code = "from lt_core.rundir import run_records\nimport sweeps.report"
    assert loaded_after(code) & {"torch", "torchvision", "ray", "optuna"} == set()
