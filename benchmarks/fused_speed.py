"""Fused training against training the same networks one after another, in one run.

1. Networks: samples per second of K networks (K = 1, 3, 8, 16) of LeNet-300-100 (the MNIST split
   in ../shared/data, batch 60, Adam), Conv-2 (batch 60, Adam) and ResNet-20 (batch 128, SGD with
   momentum) on generated CIFAR-shaped data, trained one after another (``train_tasks(...,
   fuse=False)``, i.e. ``lt_core.training.train`` per network) and fused. Each network has its
   own masks (half the weights) and, as the seeds of a configuration, its own data order; the
   ``level`` rows give the ticket and its controls one shared order, as at an IMP level. Samples
   per second count every network's samples. On the CPU, and on the GPU when there is one.
2. Level: one pruned IMP level of LeNet-300-100 (ticket + ``reinit`` + ``random_prune``), the
   engine's ``run_level`` with ``train.fuse: off`` and ``auto`` (target: >= 1.2x on 2 cores).
3. Sweep: the quickstart study through ``lt-sweep run`` with ``--set base.train.fuse=off`` and
   ``auto``: trials per hour (``--sweep``; about 3 minutes on 2 cores).

Run:  python benchmarks/fused_speed.py [--sweep] [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lt_core.config import DataConfig, TrainConfig, config_from_dict
from lt_core.data import Split, TensorData, load_dataset
from lt_core.group_training import TrainTask, train_tasks
from lt_core.imp import ImpRun
from lt_core.masks import apply_masks, dense_masks
from lt_core.models import build_model

REPO = Path(__file__).resolve().parents[1]
NPZ = REPO.parent / "shared" / "data" / "mnist-t10k-split.npz"
NETWORKS = {  # name: (input shape, train config, iterations on a CPU, on a GPU)
    "lenet_300_100": ((1, 28, 28), dict(optimizer="adam", lr=1.2e-3, batch_size=60), 300, 1000),
    "conv2": ((3, 32, 32), dict(optimizer="adam", lr=2e-4, batch_size=60), 8, 300),
    "resnet20": ((3, 32, 32), dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                                   batch_size=128), 3, 200),
}


def data_for(name: str, device: torch.device) -> TensorData:
    shape = NETWORKS[name][0]
    if name == "lenet_300_100" and NPZ.exists():
        return load_dataset(DataConfig(name="npz", path=str(NPZ)), device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5000, *shape, generator=generator).to(device)
    y = torch.randint(0, 10, (5000,), generator=generator).to(device)
    return TensorData(Split(x, y), Split(x[:500], y[:500]), None, 10, shape, shape[0] == 3,
                      torch.zeros(shape[0], device=device))


def tasks(name: str, k: int, iterations: int, shared_order: bool,
          device: torch.device) -> list[TrainTask]:
    made = []
    for index in range(k):
        torch.manual_seed(index)
        model = build_model(name, NETWORKS[name][0], 10).to(device)
        generator = torch.Generator().manual_seed(1000 + index)
        masks = {key: (torch.rand(mask.shape, generator=generator) < 0.5).to(device)
                 for key, mask in dense_masks(model).items()}
        apply_masks(model, masks)
        seed = 0 if shared_order else index
        made.append(TrainTask(model, masks, seed, 0, iterations, lambda i: 1e-3))
    return made


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples_per_second(name: str, k: int, fuse: bool, shared_order: bool,
                       device: torch.device, iterations: int) -> float:
    shape, train, _, _ = NETWORKS[name]
    config = TrainConfig(**train, length=f"{iterations}it", eval_every=f"{iterations}it")
    data = data_for(name, device)
    train_tasks(tasks(name, k, 2, shared_order, device), data,  # warm-up
                config.model_copy(update={"length": "2it", "eval_every": "2it"}), fuse)
    work = tasks(name, k, iterations, shared_order, device)
    synchronize(device)
    started = time.perf_counter()
    train_tasks(work, data, config, fuse)
    synchronize(device)
    return k * iterations * config.batch_size / (time.perf_counter() - started)


def network_table(device: torch.device, ks: list[int]) -> None:
    print(f"\n1. networks on {device_name(device)}: samples/s one after another -> fused")
    print(f"{'model':<15}{'K':>4}  {'order':<7}{'separate':>10}{'fused':>10}{'ratio':>8}")
    for name, (_, _, cpu_iterations, gpu_iterations) in NETWORKS.items():
        iterations = gpu_iterations if device.type == "cuda" else cpu_iterations
        rows = [(k, False) for k in ks] + [(3, True)]
        for k, shared in rows:
            separate = samples_per_second(name, k, False, shared, device, iterations)
            fused = samples_per_second(name, k, True, shared, device, iterations)
            order = "level" if shared else "seeds"
            print(f"{name:<15}{k:>4}  {order:<7}{separate:>10.0f}{fused:>10.0f}"
                  f"{fused / separate:>7.2f}x", flush=True)


def level_time(fuse: str, device: torch.device, folder: Path) -> float:
    config = config_from_dict({
        "model": {"name": "lenet_300_100"}, "data": {"name": "npz", "path": str(NPZ)},
        "train": {"length": "2ep", "fuse": fuse},
        "imp": {"levels": 1, "controls": ["reinit", "random_prune"]},
        "device": device.type, "threads": torch.get_num_threads()}, source="benchmark")
    run = ImpRun(config, folder / fuse)
    run.run_level(0)
    started = time.perf_counter()
    run.run_level(1)
    return time.perf_counter() - started


def level_table(device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as folder:
        off = level_time("off", device, Path(folder))
        auto = level_time("auto", device, Path(folder))
    print(f"\n2. one IMP level of LeNet-300-100 (ticket + reinit + random_prune, 2 epochs of the "
          f"MNIST split): fuse off {off:.1f} s, auto {auto:.1f} s: {off / auto:.2f}x")


def sweep_table() -> None:
    study = REPO / "search_spaces" / "quickstart.yaml"
    seconds = {}
    for fuse in ("off", "auto"):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sweeps.cli", "run", str(study),
                            f"--set=base.train.fuse={fuse}",
                            f"--set=tracking.uri=sqlite:///{folder}/mlflow.db",
                            f"--set=run.storage_path={folder}/lt_results"],
                           cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            seconds[fuse] = time.perf_counter() - started
    trials = 4
    print(f"\n3. quickstart sweep ({trials} trials, ticket + reinit per level): "
          f"fuse off {seconds['off']:.0f} s ({3600 * trials / seconds['off']:.0f} trials/h), "
          f"auto {seconds['auto']:.0f} s ({3600 * trials / seconds['auto']:.0f} trials/h): "
          f"{seconds['off'] / seconds['auto']:.2f}x")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append",
                        help="default: the CPU, and the GPU when there is one")
    parser.add_argument("--sweep", action="store_true", help="also time the quickstart sweep")
    parser.add_argument("--quick", action="store_true", help="K = 1 and 3 only")
    args = parser.parse_args()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    ks = [1, 3] if args.quick else [1, 3, 8, 16]
    for device in map(torch.device, devices):
        network_table(device, ks)
        level_table(device)
    if args.sweep:
        sweep_table()


if __name__ == "__main__":
    main()
