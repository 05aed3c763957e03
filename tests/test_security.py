"""Security defaults: no string from a config is evaluated or imported, YAML is read with
safe_load, tensors are loaded with weights_only=True, and the local Ray a sweep starts refuses a
client without its token (its ports listen on every interface; it starts no dashboard)."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lt_core.config import ConfigError, read_yaml
from lt_core.rundir import load_tensors

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "lt_core").rglob("*.py")) + sorted((REPO / "sweeps").rglob("*.py"))
BUILTINS = {"eval", "exec", "compile", "__import__"}
MODULES = {"yaml", "pickle", "cloudpickle", "marshal", "importlib", "dill"}
FORBIDDEN_CALLS = {"import_module", "load", "loads", "full_load", "unsafe_load"}


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = (func.value.id if isinstance(func, ast.Attribute) and
                     isinstance(func.value, ast.Name) else "")
            yield owner, name, node


def test_the_sources_evaluate_nothing_and_load_safely() -> None:
    assert len(SOURCES) > 30
    problems = []
    for path in SOURCES:
        for owner, name, node in calls(path):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and name == "load":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and
                           k.value.value is True for k in node.keywords)
                if not safe:
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif owner == "np" and name == "load":
                if not any(k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and
                           k.value.value is False for k in node.keywords):
                    problems.append(f"{where}: np.load without allow_pickle=False")
            elif isinstance(node.func, ast.Name) and name in BUILTINS:
                problems.append(f"{where}: {name}()")
            elif owner in MODULES and name in FORBIDDEN_CALLS:
                problems.append(f"{where}: {owner}.{name}()")
    assert problems == []


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "final.pt"
    torch.save({"weight": torch.zeros(2), "x": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_tensors(path)
    assert not (tmp_path / "pwned").exists()


def test_yaml_with_python_tags_is_refused(tmp_path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {tmp_path / 'pwned'}']\n")
    with pytest.raises(ConfigError):
        read_yaml(path)
    assert not (tmp_path / "pwned").exists()


PROBE = """
import json, sys
from sweeps.cli import ray_environment
ray_environment(None)
import ray
from sweeps.runner import start_ray
start_ray(None)
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address,
                  "dashboard": ray._private.worker.global_worker.node.address_info.get(
                      "webui_url")}), flush=True)
sys.stdin.readline()  # until the test is done
ray.shutdown()
"""


@pytest.mark.slow
def test_the_local_ray_requires_a_token_and_has_no_dashboard(ray_temp_dir) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_TMPDIR"] = str(ray_temp_dir)
    driver = subprocess.Popen([sys.executable, "-c", PROBE], cwd=REPO, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        import json

        info = json.loads(driver.stdout.readline())
        assert not info["dashboard"]
        ray = str(Path(sys.executable).with_name("ray"))
        started = time.monotonic()
        refused = subprocess.run([ray, "status", "--address", info["gcs"]], env=env,
                                 capture_output=True, text=True, timeout=120)
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0 and ("uthentication" in out or "token" in out.lower()), \
            (out[-2000:], time.monotonic() - started)
    finally:
        driver.stdin.close()
        driver.wait(timeout=60)
