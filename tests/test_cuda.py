"""The GPU path: data, masks, fused optimizers, augmentation, evaluation, fused groups,
checkpoint/resume and fractional GPUs on CUDA, with nothing falling back to the CPU. Skipped,
with the reason, on a machine without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lt_core.config import TrainConfig
from lt_core.data import Split, TensorData
from lt_core.group_training import TrainTask, train_tasks
from lt_core.imp import ImpRun, describe_device
from lt_core.masks import apply_masks, dense_masks
from lt_core.models import build_model
from lt_core.rundir import load_tensors, network_files, level_dir
from tests.sweep_helpers import quickstart_sweep, small_sweep_args, sweep_runs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU on this machine")
CUDA = torch.device("cuda")


def cuda_data(shape, n: int = 64, dtype=torch.float32) -> TensorData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=generator, dtype=dtype).to(CUDA)
    y = torch.randint(0, 10, (n,), generator=generator).to(CUDA)
    return TensorData(Split(x, y), Split(x[:32], y[:32]), None, 10, shape, shape[0] == 3,
                      torch.zeros(shape[0], dtype=dtype, device=CUDA))


def cuda_tasks(name: str, shape, seeds, dtype=torch.float64) -> list[TrainTask]:
    tasks = []
    for index, seed in enumerate(seeds):
        torch.manual_seed(index)
        model = build_model(name, shape, 10).to(CUDA, dtype)
        generator = torch.Generator().manual_seed(10 + index)
        masks = {k: (torch.rand(m.shape, generator=generator) < 0.5).to(CUDA)
                 for k, m in dense_masks(model).items()}
        apply_masks(model, masks)
        tasks.append(TrainTask(model, masks, seed, 0, 8, lambda i: 0.01))
    return tasks


@pytest.mark.parametrize("name,shape", [("lenet_300_100", (1, 28, 28)),
                                        ("resnet20", (3, 32, 32))])
def test_fused_training_on_the_gpu_matches_training_alone(name, shape) -> None:
    data = cuda_data(shape, dtype=torch.float64)
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4,
                         batch_size=8, length="8it", eval_every="4it")
    alone, fused = cuda_tasks(name, shape, [0, 0, 1]), cuda_tasks(name, shape, [0, 0, 1])
    outcomes_a = train_tasks(alone, data, config, fuse=False)
    outcomes_b = train_tasks(fused, data, config, fuse=True)
    for a, b, oa, ob in zip(alone, fused, outcomes_a, outcomes_b):
        for key, value in a.model.state_dict().items():
            other = b.model.state_dict()[key]
            assert other.device.type == "cuda"
            assert torch.allclose(value.double(), other.double(), rtol=1e-9, atol=1e-9), key
        for key, mask in b.masks.items():
            assert (b.model.state_dict()[key][~mask] == 0).all()
        assert oa.test_acc == ob.test_acc


def test_an_imp_run_on_the_gpu_resumes_and_records_its_device(tiny_config, tmp_path: Path,
                                                              monkeypatch) -> None:
    config = tiny_config({"device": "cuda", "imp": {"levels": 1, "controls": ["reinit"]},
                          "train": {"length": "40it", "eval_every": "20it"}})
    reference = ImpRun(config, tmp_path / "reference")
    assert reference.data.train.x.device.type == "cuda" and reference.fuses()
    expected = reference.run()
    assert describe_device(reference.device).startswith("cuda:")

    class Killed(BaseException):
        pass

    run = ImpRun(config, tmp_path / "resumed")
    run.run_level(0)
    calls = []

    def kill_after_first_evaluation(level, name, iteration, end, record) -> None:
        calls.append(iteration)
        if iteration == 20:
            raise Killed

    run.progress = kill_after_first_evaluation
    with pytest.raises(Killed):
        run.run_level(1)
    assert load_tensors(network_files(level_dir(run.out, 1), "ticket").checkpoint)[
        "iteration"] == 20
    resumed = ImpRun(config, tmp_path / "resumed").run()
    for a, b in zip(expected, resumed):
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1 / 200 + 1e-9)


def test_a_sweep_shares_one_gpu_between_trials(tmp_path: Path, npz_path: Path) -> None:
    quickstart_sweep(tmp_path, *small_sweep_args(npz_path, tmp_path, levels=1),
                     "--set", "base.device=cuda", "--set", "resources.gpu=0.5")
    _, trials = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "quickstart")
    assert len(trials) == 4
    assert all(run.data.tags["lt.device"].startswith("cuda:") for run in trials)
