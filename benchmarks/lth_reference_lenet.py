"""An independent plain-PyTorch IMP run of LeNet-300-100 on MNIST to cross-check lt_core's numbers.

Nothing from lt_core is used: nn.Sequential with PyTorch's default init, masks by torch.kthvalue
over each layer's surviving weights, gradients and weights multiplied by the masks around every
Adam step, a torch.randperm data order. Frankle & Carbin's LeNet setting: layerwise pruning of 20%
per level (output layer 10%), rewinding to initialisation, Adam 1.2e-3, batch 60, and a `reinit`
control (same mask, fresh init) at every level. Per level it records the final test accuracy and
the test accuracy at the early-stop epoch (minimum validation loss, from the last --val-size
training images).

Run:  python benchmarks/lth_reference_lenet.py --seed 0 [--levels 20] [--epochs 15] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_NPZ = Path(__file__).resolve().parents[1].parent / "shared/data/mnist-t10k-split.npz"
RATES = {"0.weight": 0.2, "2.weight": 0.2, "4.weight": 0.1}  # hidden 20%, output 10%


def load(npz: Path, val_size: int):
    arrays = np.load(npz)

    def images(x):
        return ((torch.tensor(x, dtype=torch.float32) / 255 - 0.1307) / 0.3081).flatten(1)

    x, y = images(arrays["x_train"]), torch.tensor(arrays["y_train"]).long()
    cut = len(x) - val_size
    return (x[:cut], y[:cut]), (x[cut:], y[cut:]), (images(arrays["x_test"]),
                                                   torch.tensor(arrays["y_test"]).long())


def lenet() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def evaluate(model: nn.Module, split) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(split[0])
        return ((logits.argmax(1) == split[1]).float().mean().item(),
                F.cross_entropy(logits, split[1]).item())


def train(state: dict, masks: dict, data, epochs: int, seed: int) -> tuple[dict, list[dict]]:
    """Train from ``state`` under ``masks``; returns final weights and per-epoch evaluations."""
    (x, y), val, test = data
    model = lenet()
    model.load_state_dict(state)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    order = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        permutation = torch.randperm(len(x), generator=order)
        for start in range(0, len(x) - 59, 60):
            batch = permutation[start:start + 60]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            for name, mask in masks.items():
                params[name].grad.mul_(mask)
            optimizer.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
        test_acc, _ = evaluate(model, test)
        _, val_loss = evaluate(model, val) if len(val[0]) else evaluate(model, test)
        curve.append({"test_acc": test_acc, "val_loss": val_loss})
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, curve


def summary(curve: list[dict]) -> dict:
    early = min(curve, key=lambda r: r["val_loss"])
    return {"test_acc": curve[-1]["test_acc"], "early_stop_acc": early["test_acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--out", type=Path, help="write the per-level records as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load(args.npz, args.val_size)
    torch.manual_seed(args.seed)
    init = lenet().state_dict()
    masks = {name: torch.ones_like(init[name]) for name in RATES}
    records, final = [], None
    print("level  density %  ticket final / early-stop %  reinit final / early-stop %")
    for level in range(args.levels + 1):
        if level:
            for name, rate in RATES.items():
                alive = masks[name].bool()
                magnitudes = final[name].abs()
                count = round(int(alive.sum()) * rate)
                threshold = magnitudes[alive].kthvalue(count).values
                masks[name] = (alive & (magnitudes > threshold)).float()
        final, curve = train(init, masks, data, args.epochs, args.seed)
        density = sum(float(m.sum()) for m in masks.values()) / sum(m.numel()
                                                                     for m in masks.values())
        record = {"level": level, "density": density, **summary(curve)}
        if level:
            torch.manual_seed(10_000 + 100 * args.seed + level)
            _, reinit_curve = train(lenet().state_dict(), masks, data, args.epochs, args.seed)
            record.update({f"reinit_{k}": v for k, v in summary(reinit_curve).items()})
        records.append(record)
        reinit = ""
        if level:
            reinit = (f"{100 * record['reinit_test_acc']:6.2f} / "
                      f"{100 * record['reinit_early_stop_acc']:6.2f}")
        print(f"{level:5d}  {100 * density:9.2f}  {100 * record['test_acc']:6.2f} / "
              f"{100 * record['early_stop_acc']:6.2f}              {reinit}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
