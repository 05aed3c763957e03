"""Atomic file writes and the paths of the run directory (a public contract).

    OUT/config.yaml, OUT/init.pt, OUT/rewind.pt
    OUT/level_NN/{mask.pt, final.pt, metrics.json}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def level_dir(out: Path, level: int) -> Path:
    return out / f"level_{level:02d}"


def _replace_from_temp(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(temp)
    os.replace(temp, path)


def atomic_save(obj: Any, path: Path) -> None:
    _replace_from_temp(path, lambda temp: torch.save(obj, temp))


def atomic_write_text(text: str, path: Path) -> None:
    _replace_from_temp(path, lambda temp: temp.write_text(text))


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def load_tensors(path: Path, device: torch.device | str = "cpu") -> Any:
    return torch.load(path, map_location=device, weights_only=True)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
