"""Dataset loading: the local npz (Keras layout), split slicing, validation carve-out,
normalisation, errors, and torchvision datasets that are absent with downloads off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lt_core.config import ConfigError, DataConfig
from lt_core.data import DataUnavailable, DatasetInfo, dataset_info, load_dataset, parse_split


def npz_config(path: Path, **changes) -> DataConfig:
    return DataConfig(name="npz", path=str(path), **changes)


def normalised(raw: np.ndarray, stats_from: np.ndarray) -> torch.Tensor:
    """The expected tensor: images scaled to [0, 1], then standardised by ``stats_from``'s mean
    and (unbiased) std, with a channel axis."""
    ref = torch.from_numpy(stats_from).float() / 255
    x = torch.from_numpy(raw).float() / 255
    return ((x - ref.mean()) / ref.std()).unsqueeze(1)


def test_npz_shapes_and_types(npz_path: Path, npz_arrays: dict) -> None:
    data = load_dataset(npz_config(npz_path, train_split="train[:5000]", test_split="test[:500]"))
    assert data.input_shape == (1, 28, 28)
    assert data.num_classes == 10
    assert len(data.train) == 5000 and len(data.test) == 500 and data.val is None
    assert data.train.x.shape == (5000, 1, 28, 28)
    for split in (data.train, data.test):
        assert isinstance(split.x, torch.Tensor) and split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64
        assert split.x.device.type == "cpu"
    assert torch.equal(data.train.y, torch.from_numpy(npz_arrays["y_train"][:5000]).long())
    assert torch.equal(data.test.y, torch.from_numpy(npz_arrays["y_test"][:500]).long())
    assert data.augment is False
    assert data.pad_value.shape == (1,)


def test_whole_splits_by_default(npz_path: Path, npz_arrays: dict) -> None:
    data = load_dataset(npz_config(npz_path))
    assert len(data.train) == len(npz_arrays["y_train"]) == 8000
    assert len(data.test) == len(npz_arrays["y_test"]) == 2000


@pytest.mark.parametrize("split, window", [
    ("train[100:300]", slice(100, 300)),
    ("train[-500:]", slice(-500, None)),
    ("train[ 7000 : ]", slice(7000, None)),
])
def test_train_split_slicing(npz_path: Path, npz_arrays: dict, split: str, window: slice) -> None:
    data = load_dataset(npz_config(npz_path, train_split=split, test_split="test[:10]"))
    raw = npz_arrays["x_train"][window]
    assert torch.equal(data.train.y, torch.from_numpy(npz_arrays["y_train"][window]).long())
    torch.testing.assert_close(data.train.x, normalised(raw, raw), atol=1e-5, rtol=1e-5)


def test_normalisation_uses_training_statistics(npz_path: Path, npz_arrays: dict) -> None:
    data = load_dataset(npz_config(npz_path, train_split="train[:3000]", test_split="test[:500]"))
    assert abs(float(data.train.x.mean())) < 1e-4
    assert float(data.train.x.std()) == pytest.approx(1.0, abs=1e-3)
    train_raw = npz_arrays["x_train"][:3000]
    # The test images are standardised with the *training* mean and std, not their own.
    torch.testing.assert_close(data.test.x, normalised(npz_arrays["x_test"][:500], train_raw),
                               atol=1e-5, rtol=1e-5)
    # A black pixel pads to the normalised value of 0.
    black = normalised(np.zeros((1, 1, 1), np.uint8), train_raw).reshape(1)
    torch.testing.assert_close(data.pad_value, black)


def test_val_size_carves_the_end_of_the_train_split(npz_path: Path, npz_arrays: dict) -> None:
    whole = load_dataset(npz_config(npz_path, train_split="train[:5000]"))
    data = load_dataset(npz_config(npz_path, train_split="train[:5000]", val_size=1000))
    assert len(data.train) == 4000 and len(data.val) == 1000
    y = npz_arrays["y_train"]
    assert torch.equal(data.train.y, torch.from_numpy(y[:4000]).long())
    assert torch.equal(data.val.y, torch.from_numpy(y[4000:5000]).long())
    assert torch.equal(data.test.y, whole.test.y)
    # The validation images are the last 1000, standardised with the 4000 training images' stats
    # only: the held-out images never leak into the normalisation.
    x = npz_arrays["x_train"]
    torch.testing.assert_close(data.val.x, normalised(x[4000:5000], x[:4000]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(data.train.x, normalised(x[:4000], x[:4000]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(data.val.x, whole.train.x[4000:5000])


def test_val_size_too_large(npz_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.val_size: "):
        load_dataset(npz_config(npz_path, train_split="train[:100]", val_size=100))


@pytest.mark.parametrize("field", ["train_split", "test_split"])
@pytest.mark.parametrize("bad", ["train[:abc]", "validation", "train[5000]", "train[1:2:3]",
                                 "train[10:10]", "test[2000:]", "", "train[:5000"])
def test_bad_split_names_the_field(npz_path: Path, field: str, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset(npz_config(npz_path, **{field: bad}))
    message = str(info.value)
    assert message.startswith(f"data.{field}: ")
    assert "\n" not in message


def test_parse_split() -> None:
    assert parse_split("train", "train_split") == ("train", slice(None, None))
    assert parse_split("test[:500]", "test_split") == ("test", slice(None, 500))
    assert parse_split("train[100:300]", "train_split") == ("train", slice(100, 300))


def test_missing_npz_names_data_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.npz"
    with pytest.raises(ConfigError) as info:
        load_dataset(npz_config(missing))
    message = str(info.value)
    assert message.startswith("data.path: ") and str(missing) in message
    assert "\n" not in message


@pytest.mark.parametrize("arrays, fragment", [
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(4)}, "lacks"),
    ({"x_train": np.zeros((4, 8, 8), np.float32), "y_train": np.zeros(4),
      "x_test": np.zeros((2, 8, 8), np.uint8), "y_test": np.zeros(2)}, "uint8"),
])
def test_malformed_npz_names_data_path(tmp_path: Path, arrays: dict, fragment: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError) as info:
        load_dataset(npz_config(path))
    assert str(info.value).startswith("data.path: ") and fragment in str(info.value)


def test_rgb_npz_layout(tmp_path: Path) -> None:
    """HxWxC uint8 images become (C, H, W) with per-channel statistics."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (50, 6, 5, 3), dtype=np.uint8)
    x_train[..., 2] //= 4  # a dimmer channel: different per-channel mean
    path = tmp_path / "rgb.npz"
    np.savez(path, x_train=x_train, y_train=rng.integers(0, 4, 50),
             x_test=x_train[:7], y_test=np.arange(7) % 4)
    data = load_dataset(npz_config(path))
    assert data.input_shape == (3, 6, 5)
    assert data.num_classes == 4
    assert data.train.x.shape == (50, 3, 6, 5)
    means = data.train.x.mean(dim=(0, 2, 3))
    stds = data.train.x.std(dim=(0, 2, 3))
    torch.testing.assert_close(means, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(stds, torch.ones(3), atol=1e-4, rtol=0)
    # The first test image is the first training image, channel by channel.
    torch.testing.assert_close(data.test.x[0], data.train.x[0])
    assert dataset_info(npz_config(path)) == DatasetInfo((3, 6, 5), 4, 50, 7)


def test_dataset_info_without_loading(npz_path: Path) -> None:
    config = npz_config(npz_path, train_split="train[1000:4000]", test_split="test[-500:]",
                        val_size=600)
    info = dataset_info(config)
    assert info == DatasetInfo((1, 28, 28), 10, 2400, 500)
    data = load_dataset(config)
    assert (len(data.train), len(data.test)) == (info.train_examples, info.test_examples)
    assert dataset_info(DataConfig(name="cifar100", root="/nonexistent", val_size=5000)) == \
        DatasetInfo((3, 32, 32), 100, 45000, 10000)
    assert dataset_info(DataConfig(name="mnist", root="/nonexistent",
                                   train_split="train[:-100]")).train_examples == 59900
    with pytest.raises(ConfigError, match=r"^data\.train_split: 'train\[8000:\]' selects no"):
        dataset_info(npz_config(npz_path, train_split="train[8000:]"))
    with pytest.raises(ConfigError, match=r"^data\.val_size: "):
        dataset_info(DataConfig(name="fashion_mnist", root="/x", val_size=60000))


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_absent_torchvision_dataset_without_download(tmp_path: Path, name: str) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DataUnavailable) as info:
        load_dataset(DataConfig(name=name, root=str(root), download=False))
    message = str(info.value)
    assert name in message
    assert str(root.resolve()) in message
    assert "download" in message
    assert "\n" not in message
    # Nothing was fetched into the root.
    assert not [p for p in root.rglob("*") if not p.name.startswith(".")]


def test_augment_flag(npz_path: Path) -> None:
    assert load_dataset(npz_config(npz_path, train_split="train[:10]", test_split="test[:10]",
                                   augment=True)).augment is True
