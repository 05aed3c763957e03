"""The run directory (a public contract): every file name is spelled here and only here.

    OUT/config.yaml, OUT/init.pt, OUT/rewind.pt, OUT/rewind_optimizer.pt (with imp.analyses),
    OUT/transfer.json (imp.ticket_from)
    OUT/level_NN/            a grid level: mask.pt, final.pt, ticket.json, history_ticket.json,
                             metrics.json (written last: the level is finished),
                             controls/NAME/{final.pt, metrics.json, history.json}
                             analyses/ANALYSIS/NETWORK/   an analysis of one network
                               (lt_core.analyses): result.json (written last), curve.json,
                               copy.json, copy_final.pt, copy_history.json
    OUT/level_NN.SSS/        a refinement point SSS thousandths of a level past level NN, laid out
                             like a level (only the networks refined there)

Writes are atomic: a temporary name, then a rename.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lt_core.levels import LevelRecord
from lt_core.metrics import TICKET

if TYPE_CHECKING:  # torch is imported where tensors are saved or loaded: reading a run's
    import torch   # records (lt-sweep report) does without it

_POINT_DIR = re.compile(r"^level_(\d{2,})(?:\.(\d{3}))?$")


def config_file(out: Path) -> Path:
    return out / "config.yaml"


def init_file(out: Path) -> Path:
    return out / "init.pt"


def rewind_file(out: Path) -> Path:
    return out / "rewind.pt"


def rewind_optimizer_file(out: Path) -> Path:
    """The optimizer's state at the rewind point (kept with ``imp.analyses``: the dense level's
    second copy continues from it as the first did)."""
    return out / "rewind_optimizer.pt"


def transfer_file(out: Path) -> Path:
    """A transfer run's source and levels, fixed when it starts (``imp.ticket_from``)."""
    return out / "transfer.json"


def analysis_curves(folder: Path) -> list[Path]:
    """The analyses' curve files of one point's folder."""
    return sorted(folder.glob("analyses/*/*/curve.json"))


def level_dir(out: Path, level: int, sublevel: int = 0) -> Path:
    return out / (f"level_{level:02d}" + (f".{sublevel:03d}" if sublevel else ""))


def point_dirs(out: Path) -> list[tuple[int, int, Path]]:
    """(level, sublevel, folder) of every level and refinement point folder, in level order."""
    found = []
    for child in out.iterdir() if out.is_dir() else ():
        match = _POINT_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), int(match.group(2) or 0), child))
    return sorted(found)


def mask_file(folder: Path) -> Path:
    return folder / "mask.pt"


def final_file(folder: Path) -> Path:
    """The ticket's weights after training at a level (a control's: ``network_files``)."""
    return network_files(folder, TICKET).final


def metrics_file(folder: Path) -> Path:
    """A level's summary of every network trained there; its presence marks the level finished."""
    return folder / "metrics.json"


@dataclass(frozen=True)
class NetworkFiles:
    """The files of one network (the ticket or a control) trained at one level."""

    result: Path  # its metrics, written last
    final: Path  # state_dict after training
    history: Path  # every evaluation
    checkpoint: Path  # mid-training state, removed when it finishes


def network_files(folder: Path, network: str) -> NetworkFiles:
    if network == TICKET:
        return NetworkFiles(folder / "ticket.json", folder / "final.pt",
                            folder / "history_ticket.json", folder / "checkpoint_ticket.pt")
    own = folder / "controls" / network
    return NetworkFiles(own / "metrics.json", own / "final.pt", own / "history.json",
                        own / "checkpoint.pt")


def analysis_dir(folder: Path, analysis: str, network: str) -> Path:
    """Where an analysis of one network at one point keeps its files."""
    return folder / "analyses" / analysis / network


def analysis_result_file(folder: Path) -> Path:
    """An analysis's measurements, written last: its presence marks it finished."""
    return folder / "result.json"


def copy_files(folder: Path) -> NetworkFiles:
    """A second copy of a network trained inside an analysis's folder."""
    return NetworkFiles(folder / "copy.json", folder / "copy_final.pt",
                        folder / "copy_history.json", folder / "copy_checkpoint.pt")


def curve_file(folder: Path) -> Path:
    """The instability analysis's error curve along the linear path."""
    return folder / "curve.json"


def _replace_from_temp(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(temp)
    os.replace(temp, path)


def atomic_save(obj: Any, path: Path) -> None:
    import torch

    _replace_from_temp(path, lambda temp: torch.save(obj, temp))


def atomic_write_text(text: str, path: Path) -> None:
    _replace_from_temp(path, lambda temp: temp.write_text(text))


def atomic_write_json(obj: Any, path: Path) -> None:
    """Strict JSON: a NaN or infinity is an error (record a value that is not finite as None)."""
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n", path)


def load_tensors(path: Path, device: torch.device | str = "cpu") -> Any:
    import torch

    return torch.load(path, map_location=device, weights_only=True)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def run_records(out: Path) -> list[LevelRecord]:
    """Every finished level and refinement point of a run directory, in level order."""
    return [LevelRecord.from_metrics(read_json(metrics_file(folder)))
            for _, _, folder in point_dirs(Path(out)) if metrics_file(folder).exists()]
