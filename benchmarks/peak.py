"""`python -m benchmarks.peak [--threads N]`: this machine's single-precision matrix-multiply rate, GFLOP/s.

The yardstick for "% of peak": the best median rate of a large float32 matrix product (2048² and 4096²)
through numpy's BLAS, PyTorch and TensorFlow, at the thread count the libraries train with. They differ
by 2x here (OpenBLAS ~245, TensorFlow's AVX-512 kernels ~480 GFLOP/s at 2 threads), so the best of them
stands for what this CPU can do; a single BLAS would let convolution libraries exceed "100 % of peak".
Printed as one line of JSON.
Run it in a fresh process whose OMP/MKL/OPENBLAS thread variables are already set (numpy's BLAS reads them
at start-up); `measure_in_subprocess` does that.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import workers
from workers import clock

SIZES = (2048, 4096)  # compute-bound; the larger one takes about 0.3 s per product at 2 threads
REPEATS = 5


def _rate(matmul, a, b, size: int, repeats: int) -> tuple:
    """(GFLOP per wall second, GFLOP per CPU second of this process, all threads) of the median product."""
    matmul(a, b)  # warm-up: thread pools, page faults
    spans = []
    for _ in range(repeats):
        started = clock.mark()
        matmul(a, b)
        spans.append(clock.span(started))
    flop = 2 * size ** 3 / 1e9
    return (flop / statistics.median(s["wall_s"] for s in spans),
            flop / max(statistics.median(s["cpu_s"] for s in spans), 1e-9))


def _matmuls(threads: int) -> dict:
    """name -> (matmul, convert a numpy array to its input), each set to `threads` threads."""
    import os

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # TensorFlow runs eagerly and synchronously on the CPU: the product exists when matmul returns
    return {"numpy": (np.matmul, lambda x: x), "torch": (torch.matmul, torch.from_numpy),
            "tensorflow": (tf.linalg.matmul, tf.constant)}


def measure(threads: int, repeats: int = REPEATS) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    rates, per_cpu = {}, {}
    for size in SIZES:
        a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
        for name, (matmul, convert) in _matmuls(threads).items():
            rates[f"{name} {size}"], per_cpu[f"{name} {size}"] = _rate(matmul, convert(a), convert(b), size, repeats)
    best = max(rates, key=rates.get)
    # per CPU second of the same product: what the busy cores do, whatever else the machine runs
    return {"gflops": rates[best], "by": best, "rates": rates, "gflops_per_cpu_s": per_cpu[best],
            "threads": threads, "size": int(best.split()[-1]), "repeats": repeats}


def measure_in_subprocess(threads: int, timeout: float = 300) -> dict:
    """measure(threads) in a fresh main-environment worker with the training thread settings."""
    lines = []
    outcome = workers.run("benchmarks.peak", ["--threads", threads], "main", timeout, on_line=lines.append,
                          threads=threads)
    if outcome.status != workers.Status.OK:
        raise RuntimeError(f"peak measurement failed: {outcome.reason}")
    return json.loads(workers.last_line("\n".join(lines)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peak", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.threads)))
    return workers.ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
