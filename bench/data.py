"""Benchmark: wall time of ingest + validate + split of both real datasets (target < 120 s).

Runs the three steps in-process into a temporary root so the repository's outputs are untouched,
and prints each step's seconds and rows per second. `make bench` runs it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from artifacts.paths import Paths
from pipelines import ingest, split, validate
from pipelines.common import load_params


def main() -> None:
    from pipelines.common import configure_logging

    configure_logging()
    params = load_params()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        paths = Paths(root=Path(tmp))
        timings = {}
        for name, step in (("ingest", ingest), ("validate", validate), ("split", split)):
            start = time.perf_counter()
            step.run(params, paths)
            timings[name] = time.perf_counter() - start
    total = sum(timings.values())
    print("\nstep       seconds")
    for name, secs in timings.items():
        print(f"{name:<10} {secs:7.1f}")
    print(f"{'total':<10} {total:7.1f}   (target < 120 s on 2 cores; ratio to target {total / 120:.2f})")


if __name__ == "__main__":
    main()
