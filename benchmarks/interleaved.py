"""Timing shared by the benchmarks that compare variants on one shared machine."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


def best_of_interleaved(runs: dict[Hashable, Callable[[], object]], repeats: int,
                        setup: Callable[[Hashable], object] | None = None) -> tuple[dict, dict]:
    """Call every variant once per repeat, in turn, so that load drifting on the machine hits all
    of them alike. Returns each variant's best wall-clock seconds and its last output.
    ``setup(key)``, untimed, runs before each call (e.g. to remove the previous call's output)."""
    best = {key: float("inf") for key in runs}
    outputs = {}
    for r in range(repeats):
        for key, run in runs.items():
            if setup is not None:
                setup(key)
            t0 = time.perf_counter()
            outputs[key] = run()
            seconds = time.perf_counter() - t0
            best[key] = min(best[key], seconds)
            print(f"repeat {r + 1}/{repeats} {key}: {seconds:.2f}s", flush=True)
    return best, outputs
