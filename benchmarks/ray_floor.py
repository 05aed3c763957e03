"""What any Ray sweep of lt-sweep's trials costs before and after its training, with no lt-sweep
code run: the least a sweep's start plus end can be on this machine.

In order, as a sweep must do them, in one fresh process:
- import torch: the driver validates the study (the model on the meta device) before it starts
  anything, and that needs torch;
- start a local Ray with the options `lt-sweep run` uses (`sweeps.runner.start_ray`);
- start as many actors as a sweep runs trials at once, each with the trial's CPUs, each importing
  torch (a trial cannot train without it) and answering one call;
- stop Ray as `lt-sweep run` does (`sweeps.runner.stop_ray`).

A real sweep does more in each step (the trial workers also import Ray Tune and run inside
Tune's `runtime_env`, and they load data), so this is a floor, not an estimate.

Run:  python benchmarks/ray_floor.py [--actors N] [--cpus C]   (prints one JSON line)
"""

from __future__ import annotations

import argparse
import importlib
import json
import time

started = time.perf_counter()  # the interpreter's own start is not counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=2, help="actors started at once")
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs of each actor")
    args = parser.parse_args()
    importlib.import_module("torch")  # what the driver's validation imports

    imported = time.perf_counter()
    from sweeps.cli import ray_environment

    ray_environment(None)
    import ray

    ray_imported = time.perf_counter()
    from sweeps.runner import start_ray, stop_ray  # not counted: Ray Tune and lt_core

    counted = time.perf_counter()
    start_ray(None)
    ray_up = time.perf_counter()

    @ray.remote(num_cpus=args.cpus)
    class Trial:
        def __init__(self):
            importlib.import_module("torch")  # what a trial trains with

        def ready(self) -> bool:
            return True

    actors = [Trial.remote() for _ in range(args.actors)]
    ray.get([actor.ready.remote() for actor in actors])
    ready = time.perf_counter()
    stop_ray()
    stopped = time.perf_counter()
    phases = {"import torch": imported - started,
              "import ray, ray.init": ray_imported - imported + ray_up - counted,
              "actors ready": ready - ray_up, "stop": stopped - ready}
    print(json.dumps({**phases, "total": sum(phases.values())}), flush=True)


if __name__ == "__main__":
    main()
