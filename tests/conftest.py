"""Shared fixtures: the small local MNIST npz and tiny IMP configs that train in well under a second.

The npz (Keras layout, 8000 train / 2000 test MNIST images) lives beside the repository in
``../shared/data``; set ``LT_TEST_NPZ`` to point elsewhere. Tests that need it fail when it is
absent (a skipped suite would pass without testing anything).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from lt_core.config import DataConfig, ExperimentConfig, config_from_dict, deep_merge
from lt_core.data import TensorData, load_dataset

# Two test processes run side by side (pytest-xdist, `-n 2` in pyproject.toml): each trains with
# one torch thread, and so do the processes it starts. With torch's default of a thread per core,
# two processes on 2 cores spin-waited for each other (the suite took 1.6x longer, not less).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
NPZ_PATH = Path(os.environ.get("LT_TEST_NPZ",
                               REPO.parent / "shared" / "data" / "mnist-t10k-split.npz"))

# 1200 training images at batch 60: 20 iterations per epoch.
TINY_TRAIN_SPLIT = "train[:1200]"
TINY_TEST_SPLIT = "test[:200]"


@pytest.fixture(scope="session")
def npz_path() -> Path:
    if not NPZ_PATH.is_file():
        pytest.fail(f"test data {NPZ_PATH} not present (set LT_TEST_NPZ)")
    return NPZ_PATH


@pytest.fixture(scope="session")
def npz_arrays(npz_path: Path) -> dict[str, np.ndarray]:
    with np.load(npz_path) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="session")
def tiny_data(npz_path: Path) -> TensorData:
    """1200 train / 200 test MNIST images as normalised CPU tensors (never modified by training)."""
    config = DataConfig(name="npz", path=str(npz_path), train_split=TINY_TRAIN_SPLIT,
                        test_split=TINY_TEST_SPLIT)
    return load_dataset(config, "cpu")


@pytest.fixture(scope="session")
def tiny_config(npz_path: Path):
    """Factory: a LeNet-300-100 IMP config on the tiny split (40 iterations per level), with a
    nested dict of changes merged on top."""

    def make(changes: dict | None = None) -> ExperimentConfig:
        raw = {
            "model": {"name": "lenet_300_100"},
            "data": {"name": "npz", "path": str(npz_path), "train_split": TINY_TRAIN_SPLIT,
                     "test_split": TINY_TEST_SPLIT},
            "train": {"length": "40it", "eval_every": "20it"},
            "imp": {"levels": 1},
            "device": "cpu",
        }
        return config_from_dict(deep_merge(raw, changes or {}), source="test")

    return make


@pytest.fixture
def ray_temp_dir() -> Iterator[Path]:
    """A Ray temp dir with a short path (Ray's unix socket paths inside it must stay under 107
    bytes, which pytest's tmp_path can exceed), removed after the test."""
    temp = Path(tempfile.mkdtemp(prefix="lt-ray-", dir="/tmp"))
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)
