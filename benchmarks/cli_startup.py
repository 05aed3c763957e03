"""How long `lt-sweep` takes before it does anything: `--help`, a subcommand's `--help`, and
`validate` of the quickstart study, each as a fresh process (the user's experience), median of
several runs. Beside them, the cost of the imports the commands used to pay up front (torch,
torchvision, mlflow, ray), each in a fresh process, for comparison in the same run.

Run:  python benchmarks/cli_startup.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS = {
    "lt-sweep --help": ["-m", "sweeps.cli", "--help"],
    "lt-sweep run --help": ["-m", "sweeps.cli", "run", "--help"],
    "lt-sweep validate quickstart": ["-m", "sweeps.cli", "validate",
                                     "search_spaces/quickstart.yaml"],
    "python (nothing imported)": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "import torch, torchvision": ["-c", "import torch, torchvision"],
    "import mlflow": ["-c", "import mlflow"],
    "import ray.tune": ["-c", "import ray.tune"],
}


def seconds(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name, command in COMMANDS.items():
        seconds(command)  # warm the file cache
        times = [seconds(command) for _ in range(args.repeat)]
        print(f"{name:32s} median {statistics.median(times):6.2f} s  "
              f"(min {min(times):.2f}, max {max(times):.2f}, n={args.repeat})", flush=True)


if __name__ == "__main__":
    main()
