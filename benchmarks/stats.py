"""The benchmark's statistics, apart from its storage (results.json) and its comparison (benchmarks.compare):
which epochs count, and 95 % intervals for medians and ratios of medians (scipy's bootstrap, percentile method,
a fixed seed so that a report reads the same twice).

An epoch is disturbed when the machine took CPU from the run while it trained: a CPU pressure stall share (some
runnable task waiting for a CPU, /proc/pressure/cpu) or a steal share (the hypervisor serving other guests) above
the policy's thresholds (benchmarks/policy.json). Disturbed epochs are left out when enough undisturbed ones
remain, and the report says how many.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

POLICY = Path(__file__).with_name("policy.json")
CONFIDENCE = 0.95
RESAMPLES = 4000
SEED = 2017


def policy(path: Path = POLICY) -> dict:
    return json.loads(Path(path).read_text())


def disturbed(wall_s: float, steal_s, pressure_s, cores: int, rules: dict) -> bool:
    """Whether the machine took CPU from an epoch beyond the policy's shares (figures a kernel lacks count as 0)."""
    return ((pressure_s or 0.0) > rules["pressure_share"] * wall_s
            or (steal_s or 0.0) > rules["steal_share"] * wall_s * cores)


def kept(values: list, flags: list, minimum: int) -> tuple:
    """(the values of undisturbed epochs, or all of them when fewer than `minimum` are undisturbed; how many were
    left out)."""
    clean = [v for v, bad in zip(values, flags) if not bad]
    return (clean, len(values) - len(clean)) if len(clean) >= minimum else (list(values), 0)


def count(flags: list) -> int:
    return sum(bool(f) for f in flags)


def _interval(samples: tuple, statistic, confidence: float = CONFIDENCE) -> tuple:
    """(low, high) percentile-bootstrap interval of statistic(*samples), each sample resampled on its own;
    (None, None) when a sample has fewer than two values."""
    if any(len(s) < 2 for s in samples):
        return None, None
    from scipy import stats

    result = stats.bootstrap(tuple(np.asarray(s, dtype=float) for s in samples), statistic, vectorized=True,
                             confidence_level=confidence, n_resamples=RESAMPLES, method="percentile",
                             random_state=np.random.default_rng(SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def median_interval(values: list) -> dict:
    """{median, low, high} of values (low/high None when there are too few)."""
    if not values:
        return {"median": None, "low": None, "high": None}
    low, high = _interval((values,), lambda a, axis: np.median(a, axis=axis))
    return {"median": float(np.median(values)), "low": low, "high": high}


def ratio_interval(numerator: list, denominator: list, confidence: float = CONFIDENCE) -> dict:
    """{ratio, low, high}: median(numerator) / median(denominator) with its interval, the two samples resampled
    independently (epochs of different processes)."""
    if not numerator or not denominator:
        return {"ratio": None, "low": None, "high": None}
    low, high = _interval((numerator, denominator),
                          lambda a, b, axis: np.median(a, axis=axis) / np.median(b, axis=axis), confidence)
    return {"ratio": float(np.median(numerator) / np.median(denominator)), "low": low, "high": high}


def run_ratios(runs: list) -> list:
    """Each run's median ratio of its side-by-side pairs ([[(numerator, denominator), ...] per run])."""
    return [float(np.median([a / b for a, b in pairs])) for pairs in runs if pairs]


def paired_ratio_interval(runs: list, confidence: float = CONFIDENCE) -> dict:
    """{ratio, low, high, runs}: numerator over denominator of epochs measured side by side (workers.turns), runs
    [[(numerator, denominator), ...] per run]. Each run's ratio is the median of its pairs' ratios (the machine's
    drift cancels within a pair); the runs are the replicates, since each process has its own speed (memory layout,
    thread placement) that no number of its epochs averages out: the geometric mean of the run ratios with a t
    interval over runs (low/high None with one run)."""
    ratios = run_ratios(runs)
    if not ratios:
        return {"ratio": None, "low": None, "high": None, "runs": 0}
    logs, centre = np.log(ratios), geometric_mean(ratios)
    if len(ratios) < 2:
        return {"ratio": centre, "low": None, "high": None, "runs": 1}
    from scipy import stats

    half = stats.t.ppf(0.5 + confidence / 2, len(ratios) - 1) * logs.std(ddof=1) / np.sqrt(len(ratios))
    return {"ratio": centre, "low": float(np.exp(logs.mean() - half)), "high": float(np.exp(logs.mean() + half)),
            "runs": len(ratios)}


def geometric_mean(values: list) -> float | None:
    return float(np.exp(np.mean(np.log(values)))) if len(values) else None


def change_interval(before: list, after: list, confidence: float = CONFIDENCE) -> dict:
    """{ratio, low, high}: the geometric mean of `after` over that of `before` (positive figures, one per run) with a
    Welch t interval on their logarithms; low/high None unless each has two figures."""
    a, b = np.log(before), np.log(after)
    if len(a) < 1 or len(b) < 1:
        return {"ratio": None, "low": None, "high": None}
    ratio = float(np.exp(b.mean() - a.mean()))
    if len(a) < 2 or len(b) < 2:
        return {"ratio": ratio, "low": None, "high": None}
    from scipy import stats

    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
    half = stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(va + vb)
    return {"ratio": ratio, "low": float(np.exp(b.mean() - a.mean() - half)),
            "high": float(np.exp(b.mean() - a.mean() + half))}
