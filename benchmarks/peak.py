"""`python -m benchmarks.peak [--threads N]`: this machine's single-precision matrix-multiply rate, GFLOP/s.

The yardstick for "% of peak": the best median rate of a large float32 matrix product, through PyTorch
(oneDNN/MKL) and numpy's BLAS, at the thread count the libraries train with. Printed as one line of JSON.
Run it in a fresh process whose OMP/MKL/OPENBLAS thread variables are already set (numpy's BLAS reads them
at start-up); `measure_in_subprocess` does that.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SIZE = 2048  # large enough to be compute-bound, small enough to take well under a second per product
REPEATS = 7


def _rate(matmul, a, b, repeats: int) -> float:
    matmul(a, b)  # warm-up: thread pools, page faults
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, b)
        times.append(time.perf_counter() - started)
    return 2 * SIZE ** 3 / statistics.median(times) / 1e9


def measure(threads: int, repeats: int = REPEATS) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((SIZE, SIZE), dtype=np.float32) for _ in range(2))
    rates = {"numpy": _rate(np.matmul, a, b, repeats)}
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    rates["torch"] = _rate(torch.matmul, ta, tb, repeats)
    best = max(rates, key=rates.get)
    return {"gflops": rates[best], "by": best, "rates": rates, "threads": threads, "size": SIZE,
            "repeats": repeats}


def measure_in_subprocess(python: str, env: dict, threads: int, cwd) -> dict:
    proc = subprocess.run([python, "-m", "benchmarks.peak", "--threads", str(threads)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"peak measurement failed: {(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peak", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
