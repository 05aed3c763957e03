"""Datasets as normalised tensors on the training device.

torchvision datasets are read from their raw arrays (no per-sample PIL); downloads are guarded by a
file lock so parallel trials do not fetch at once. ``npz`` reads a local file in the Keras layout
(``x_train, y_train, x_test, y_test``; uint8 images HxW or HxWxC).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from lt_core.config import DataConfig
from lt_core.errors import ConfigError, DataUnavailable

# name: (torchvision class name, channel means, channel stds, classes)
TORCHVISION = {
    "mnist": ("MNIST", (0.1307,), (0.3081,), 10),
    "fashion_mnist": ("FashionMNIST", (0.2860,), (0.3530,), 10),
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
    "cifar100": ("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
}
SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32),
          "cifar100": (3, 32, 32)}
SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "cifar10": (50000, 10000),
         "cifar100": (50000, 10000)}  # (train, test) examples
_SPLIT = re.compile(r"^(train|test)(?:\[(-?\d*):(-?\d*)\])?$")


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32, normalised, on the training device
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TensorData:
    train: Split
    test: Split
    val: Split | None
    num_classes: int
    input_shape: tuple[int, int, int]
    augment: bool  # random crop (pad 4) + horizontal flip on training batches
    pad_value: torch.Tensor  # (C,) the normalised value of a black pixel, for crop padding


def parse_split(text: str, field: str) -> tuple[str, slice]:
    match = _SPLIT.match(text.replace(" ", ""))
    if not match:
        raise ConfigError(f"data.{field}: {text!r} is not 'train', 'test' or e.g. 'train[:5000]'")
    start, stop = (int(v) if v not in (None, "") else None for v in match.group(2, 3))
    return match.group(1), slice(start, stop)


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()


KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The four arrays of a Keras-layout npz, checked: uint8 images of one shape, integer labels
    as long as the images, classes 0..K-1. ConfigError (``data.path: FILE: reason``) otherwise."""
    file = _resolve(path)
    if not file.exists():
        raise ConfigError(f"data.path: {file} does not exist")
    if not file.is_file():
        raise ConfigError(f"data.path: {file} is not a file")
    try:
        archive = np.load(file, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ConfigError(f"data.path: {file} holds one array, not an npz archive of "
                              f"{', '.join(KERAS_KEYS)}")
        with archive:
            missing = set(KERAS_KEYS) - set(archive.files)
            if missing:
                raise ConfigError(f"data.path: {file} lacks {sorted(missing)} (Keras npz "
                                  f"layout: {', '.join(KERAS_KEYS)})")
            arrays = {key: archive[key] for key in KERAS_KEYS}
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # truncated, pickled...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"data.path: {file} is not a readable npz archive ({reason})") from None
    _check_arrays(arrays, file)
    return arrays


def _check_arrays(arrays: dict[str, np.ndarray], file: Path) -> None:
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise ConfigError(f"data.path: {file}: x_{part} must be uint8 images N x H x W (x C),"
                              f" not {x.dtype} of shape {x.shape}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"data.path: {file}: y_{part} must be a 1-D array of integer class "
                              f"labels, not {y.dtype} of shape {y.shape}")
        if len(x) != len(y):
            raise ConfigError(f"data.path: {file}: x_{part} has {len(x)} images but y_{part} "
                              f"{len(y)} labels")
        if len(y) == 0:
            raise ConfigError(f"data.path: {file}: the {part} arrays are empty")
        if y.min() < 0:
            raise ConfigError(f"data.path: {file}: y_{part} has negative labels "
                              f"({int(y.min())}); classes are 0..K-1")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ConfigError(f"data.path: {file}: train images are {arrays['x_train'].shape[1:]} but "
                          f"test images {arrays['x_test'].shape[1:]}")


def npz_classes(arrays: dict[str, np.ndarray]) -> int:
    """K: the largest label in the file + 1."""
    return int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1


def _check_classes(arrays: dict[str, np.ndarray], trained: np.ndarray, file: Path,
                   split: str) -> int:
    """K (``npz_classes``); every class 0..K-1 must occur in the examples trained on."""
    classes = npz_classes(arrays)
    if classes < 2:
        raise ConfigError(f"data.path: {file}: every label is 0: a classifier needs at least two "
                          f"classes")
    absent = np.setdiff1d(np.arange(classes), np.unique(trained))
    if absent.size:
        shown = ", ".join(str(int(c)) for c in absent[:5]) + (", ..." if absent.size > 5 else "")
        raise ConfigError(f"data.path: {file}: classes {shown} of 0..{classes - 1} never occur in "
                          f"the training split {split!r} (labels must be 0..K-1, each present)")
    return classes


def _read_torchvision(config: DataConfig) -> dict[str, np.ndarray]:
    import torchvision

    class_name = TORCHVISION[config.name][0]
    root = _resolve(config.root)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    with FileLock(str(root / f".{config.name}.lock")):
        for part, is_train in (("train", True), ("test", False)):
            try:
                dataset = getattr(torchvision.datasets, class_name)(
                    str(root), train=is_train, download=config.download)
            except Exception as err:  # torchvision raises RuntimeError/URLError/OSError here
                how = "downloading it failed" if config.download else "data.download is false"
                raise DataUnavailable(
                    f"data.name: {config.name} is not under {root} and {how} "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                    f"copy the dataset there or allow downloads") from None
            arrays[f"x_{part}"] = np.asarray(dataset.data)
            arrays[f"y_{part}"] = np.asarray(dataset.targets)
    return arrays


def _to_images(array: np.ndarray) -> torch.Tensor:
    images = torch.from_numpy(np.ascontiguousarray(array))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.float().div_(255.0)


@dataclass(frozen=True)
class DatasetInfo:
    """What the edge checks need to know about a dataset, without loading its images."""

    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    train_examples: int  # after the validation holdout
    test_examples: int


def dataset_info(config: DataConfig) -> DatasetInfo:
    """Shape, classes and split sizes; ConfigError (field named) for a split that selects nothing
    or a holdout that leaves no training examples."""
    if config.name == "npz":
        arrays = _read_npz(config.path)
        x = arrays["x_train"]
        shape = (1, *x.shape[1:3]) if x.ndim == 3 else (x.shape[3], *x.shape[1:3])
        totals = {"train": len(arrays["y_train"]), "test": len(arrays["y_test"])}
        sizes = _split_sizes(config, totals)
        source, window = parse_split(config.train_split, "train_split")
        trained = arrays[f"y_{source}"][window][:sizes[0]]  # the holdout is not trained on
        classes = _check_classes(arrays, trained, _resolve(config.path), config.train_split)
        return DatasetInfo(shape, classes, *sizes)
    shape, classes = SHAPES[config.name], TORCHVISION[config.name][3]
    totals = dict(zip(("train", "test"), SIZES[config.name]))
    return DatasetInfo(shape, classes, *_split_sizes(config, totals))


def _split_sizes(config: DataConfig, totals: dict[str, int]) -> tuple[int, int]:
    """(training examples after the holdout, test examples) given the sizes of train and test."""
    sizes = {}
    for field in ("train_split", "test_split"):
        source, window = parse_split(getattr(config, field), field)
        sizes[field] = len(range(totals[source])[window])
        if sizes[field] == 0:
            raise ConfigError(f"data.{field}: {getattr(config, field)!r} selects no examples")
    if config.val_size >= sizes["train_split"]:
        raise ConfigError(f"data.val_size: {config.val_size} leaves no training examples "
                          f"(train split has {sizes['train_split']})")
    return sizes["train_split"] - config.val_size, sizes["test_split"]


def load_dataset(config: DataConfig, device: torch.device | str = "cpu") -> TensorData:
    arrays = _read_npz(config.path) if config.name == "npz" else _read_torchvision(config)
    n_train, _ = _split_sizes(config, {"train": len(arrays["y_train"]),
                                       "test": len(arrays["y_test"])})
    parts = {}
    for field in ("train_split", "test_split"):
        source, window = parse_split(getattr(config, field), field)
        x, y = arrays[f"x_{source}"][window], arrays[f"y_{source}"][window]
        parts[field] = (_to_images(x), torch.as_tensor(np.asarray(y), dtype=torch.int64))
    (train_x, train_y), (test_x, test_y) = parts["train_split"], parts["test_split"]
    if config.name == "npz":  # per-channel statistics of the training images (not validation)
        mean = train_x[:n_train].mean(dim=(0, 2, 3))
        std = train_x[:n_train].std(dim=(0, 2, 3)).clamp_min(1e-6)
    else:
        mean = torch.tensor(TORCHVISION[config.name][1])
        std = torch.tensor(TORCHVISION[config.name][2])

    def split(x: torch.Tensor, y: torch.Tensor) -> Split:
        x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        return Split(x.to(device), y.to(device))

    val = split(train_x[n_train:], train_y[n_train:]) if config.val_size else None
    num_classes = npz_classes(arrays) if config.name == "npz" else TORCHVISION[config.name][3]
    augment = config.augment if config.augment is not None else config.name.startswith("cifar")
    return TensorData(
        train=split(train_x[:n_train], train_y[:n_train]),
        test=split(test_x, test_y),
        val=val,
        num_classes=num_classes,
        input_shape=tuple(train_x.shape[1:]),
        augment=augment,
        pad_value=(-mean / std).to(device),
    )
